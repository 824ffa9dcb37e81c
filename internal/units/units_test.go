package units

import "testing"

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"65536", 65536, true}, {"64MiB", 64 << 20, true}, {"4GiB", 4 << 30, true},
		{"1.5GB", 1500000000, true}, {"2K", 2048, true}, {" 8 MiB ", 8 << 20, true},
		{"lots", 0, false}, {"-5", 0, false}, {"", 0, false}, {"1e20GiB", 0, false},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestParseBudget(t *testing.T) {
	tests := []struct {
		in      string
		bytes   int64
		percent float64
		ok      bool
	}{
		{"", 0, 0, true}, {"0", 0, 0, true}, {"50GiB", 50 << 30, 0, true}, {"80%", 0, 80, true},
		{"0%", 0, 0, false}, {"101%", 0, 0, false}, {"x%", 0, 0, false}, {"lots", 0, 0, false},
	}
	for _, tt := range tests {
		b, p, err := ParseBudget(tt.in)
		if (err == nil) != tt.ok || b != tt.bytes || p != tt.percent {
			t.Errorf("ParseBudget(%q) = %d, %g, %v; want %d, %g, ok=%v", tt.in, b, p, err, tt.bytes, tt.percent, tt.ok)
		}
	}
}

func TestFormatSize(t *testing.T) {
	tests := []struct {
		in   int64
		want string
	}{
		{0, "0 B"}, {1023, "1023 B"}, {1024, "1.0 KiB"}, {4 << 20, "4.0 MiB"},
		{3 << 29, "1.5 GiB"}, {5 << 40, "5.0 TiB"},
	}
	for _, tt := range tests {
		if got := FormatSize(tt.in); got != tt.want {
			t.Errorf("FormatSize(%d) = %q, want %q", tt.in, got, tt.want)
		}
		if back, err := ParseSize(FormatSize(tt.in)); err != nil || back != tt.in {
			t.Errorf("ParseSize(FormatSize(%d)) = %d, %v", tt.in, back, err)
		}
	}
}
