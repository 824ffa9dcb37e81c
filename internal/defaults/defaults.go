// Package defaults is the one rule by which every role's Config (worker,
// scheduler, model cache, engine backends) gets its documented defaults: a
// field left at its zero value, or, for a count, size or duration, at a
// negative one, takes the default written where the field is declared.
//
// A New function states each default once, beside the others:
//
//	defaults.Positive(&cfg.Concurrency, 1)
//	defaults.Positive(&cfg.ShutdownTimeout, 30*time.Second)
//	defaults.Zero(&cfg.Logger, slog.Default())
package defaults

// Number is what Positive applies to: counts, sizes, rates and
// durations (time.Duration is an int64).
type Number interface {
	~int | ~int32 | ~int64 | ~float64
}

// Positive sets *p to def when *p is zero or negative.
func Positive[T Number](p *T, def T) {
	if *p <= 0 {
		*p = def
	}
}

// Zero sets *p to def when *p is its type's zero value ("", nil, false).
func Zero[T comparable](p *T, def T) {
	var zero T
	if *p == zero {
		*p = def
	}
}
