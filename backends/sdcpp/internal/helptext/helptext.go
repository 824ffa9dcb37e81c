// Package helptext reads the --help of stable-diffusion.cpp's programs as
// they print it; the spec package's tables are generated from it.
package helptext

import (
	"bufio"
	"fmt"
	"regexp"
	"strings"
)

// Help is what a captured --help of one of the engine's programs says.
type Help struct {
	// Commit is the engine commit the help was captured from (its
	// "# commit: …" header line).
	Commit string
	// Flags are the flags listed, long and short names, in order.
	Flags []string
	// Choices are the values listed for a flag ("one of [a, b, …]" in its
	// description), by long flag name.
	Choices map[string][]string
	// Aliases are the aliases listed for a flag's values ("alias:
	// normal=discrete"), by long flag name.
	Aliases map[string]map[string]string
	// Values are the value placeholders of the flags that show one
	// ("--clip-skip <int>": "int"), by long flag name; a flag without one
	// is a switch.
	Values map[string]string
}

var (
	choicesRE = regexp.MustCompile(`one of \[([^\]]*)\]`)
	aliasRE   = regexp.MustCompile(`alias: ((?:[a-z0-9_+.-]+=[a-z0-9_+.-]+,? ?)+)`)
)

// Parse reads a help text as stable-diffusion.cpp's programs print it:
// option lines indented by two spaces ("  -o, --output <string>   path …"),
// their descriptions continued on lines indented further. Lines starting
// with "#" are the capture's header.
func Parse(text string) (*Help, error) {
	h := &Help{Choices: map[string][]string{}, Aliases: map[string]map[string]string{}, Values: map[string]string{}}
	var long string   // the option being described
	var desc []string // its description so far
	flush := func() {
		if long == "" {
			return
		}
		d := strings.Join(desc, " ")
		if m := choicesRE.FindStringSubmatch(d); m != nil {
			var vals []string
			for _, v := range strings.Split(m[1], ",") {
				if v = strings.TrimSpace(v); v != "" {
					vals = append(vals, v)
				}
			}
			h.Choices[long] = vals
		}
		if m := aliasRE.FindStringSubmatch(d); m != nil {
			al := map[string]string{}
			for _, kv := range strings.Split(m[1], ",") {
				if k, v, ok := strings.Cut(strings.TrimSpace(kv), "="); ok {
					al[k] = v
				}
			}
			h.Aliases[long] = al
		}
		long, desc = "", nil
	}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), " \t\r")
		if c, ok := strings.CutPrefix(line, "# commit:"); ok {
			h.Commit = strings.TrimSpace(c)
			continue
		}
		if strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "  -") && !strings.HasPrefix(line, "   ") {
			flush()
			head, rest := splitColumns(strings.TrimSpace(line))
			for _, f := range strings.Split(head, ",") {
				f = strings.TrimSpace(f)
				name, value, _ := strings.Cut(f, " ") // "--output <string>"
				if !strings.HasPrefix(name, "-") {
					return nil, fmt.Errorf("help line %q: %q is not a flag", line, name)
				}
				h.Flags = append(h.Flags, name)
				if strings.HasPrefix(name, "--") {
					long = name
					if v, ok := strings.CutPrefix(strings.TrimSpace(value), "<"); ok {
						h.Values[name] = strings.TrimSuffix(v, ">")
					}
				}
			}
			if rest != "" {
				desc = append(desc, rest)
			}
			continue
		}
		if long != "" && strings.HasPrefix(line, "   ") {
			desc = append(desc, strings.TrimSpace(line))
			continue
		}
		flush() // a section title, the usage line or a blank line
	}
	flush()
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(h.Flags) == 0 {
		return nil, fmt.Errorf("no option lines found")
	}
	return h, nil
}

// splitColumns splits an option line at the first run of two or more
// spaces: the flags and the description.
func splitColumns(s string) (head, rest string) {
	if i := strings.Index(s, "  "); i >= 0 {
		return s[:i], strings.TrimSpace(s[i:])
	}
	return s, ""
}
