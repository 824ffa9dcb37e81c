//go:build race

package refgen

// raceEnabled reports whether tests run under the race detector, which
// makes the large-model tests too slow.
const raceEnabled = true
