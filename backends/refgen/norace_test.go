//go:build !race

package refgen

const raceEnabled = false
