//go:build race

package testenv

// RaceEnabled reports whether this binary was built with the race
// detector, which slows CPU-bound work (such as a model's weight sweep)
// about tenfold: tests size their work by it.
const RaceEnabled = true
