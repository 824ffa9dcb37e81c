// Package peer is genfleet's fleet-wide model cache: worker hosts fetch
// model files from each other instead of each pulling them from S3.
//
// Three parts, all wired by the worker role (which knows the fleet); the
// model cache (package modelcache) knows nothing of hosts:
//
//   - Server serves a host's blobs to its peers over HTTP with ranges:
//     complete blobs known intact, and the verified parts of blobs still
//     downloading (modelcache.OpenPeerBlob), behind a fleet token and a
//     bandwidth limit so that serving never starves the host's own jobs.
//   - Source is the cache's source (a modelcache.PartSource): for a file
//     with part digests it fetches each part from a peer that has it,
//     falling back to S3 part by part when no peer has it in time, or a
//     peer fails, stalls or serves bytes that do not match the part's
//     digest (that peer is then avoided for a while). Every other request
//     goes to S3.
//   - The election: when no peer has a blob, the hosts that need it race
//     for a Redis lease; the winner pulls the blob from S3 while the others
//     stream its verified parts from it and from each other, so S3 serves
//     each blob about once per fleet.
//
// Peers find each other through the worker heartbeats (job.Heartbeat.Peer
// lists what a host serves) and, for downloads in progress, through a
// per-blob swarm set in Redis. docs/fleet.md describes the protocol.
package peer
