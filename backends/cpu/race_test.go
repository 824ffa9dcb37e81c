//go:build race

package cpu

// raceEnabled reports whether tests run under the race detector, which
// slows the weight sweep about tenfold; large-model tests shrink then.
const raceEnabled = true
