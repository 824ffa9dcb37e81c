package ui

import (
	"bytes"
	"html/template"
	"net/http"
	"strconv"
)

// view is what every page template gets.
type view struct {
	Title string
	// Nav names the page's entry in the navigation ("fleet", "jobs",
	// "submit"), marked aria-current.
	Nav     string
	Session *session
	// Refresh is the script's refresh interval, in milliseconds.
	Refresh int64
	// NoScriptRefresh, in seconds, makes the page reload itself where
	// the script does not run (a job still running).
	NoScriptRefresh int
	Data            any
}

// pages are the parsed templates: each page is layout.html with the
// page's own file, and every page can use the fragments in parts.html.
type pages struct {
	page map[string]*template.Template
	part *template.Template
}

var funcs = template.FuncMap{
	// f2 writes a percentage for an SVG attribute ("12.50").
	"f2": func(f float64) string { return strconv.FormatFloat(f, 'f', 2, 64) },
}

// loadPages parses the embedded templates. It panics on a template that
// does not parse: they are part of the binary, and every test that makes
// a UI finds such a fault.
func loadPages() *pages {
	part := template.Must(template.New("parts.html").Funcs(funcs).ParseFS(assets, "assets/parts.html"))
	p := &pages{page: map[string]*template.Template{}, part: part}
	for _, name := range []string{"fleet", "jobs", "job", "submit", "login", "error"} {
		t := template.Must(template.Must(part.Clone()).ParseFS(assets, "assets/layout.html", "assets/"+name+".html"))
		p.page[name] = t
	}
	return p
}

// render writes page name with v, answering code. The page is made in
// full before anything is sent, so a template error is a clean 500.
func (u *UI) render(w http.ResponseWriter, r *http.Request, code int, name string, v *view) {
	if v.Session == nil {
		v.Session, _ = u.session(r)
	}
	v.Refresh = u.cfg.Refresh.Milliseconds()
	var buf bytes.Buffer
	if err := u.pages.page[name].ExecuteTemplate(&buf, "layout", v); err != nil {
		u.cfg.Logger.Error("ui: render page", "page", name, "err", err)
		http.Error(w, "the page could not be made; the scheduler's log says why", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(buf.Bytes())
}

// renderPart writes the fragment name with data: what the page's script
// swaps in.
func (u *UI) renderPart(w http.ResponseWriter, name string, data any) {
	var buf bytes.Buffer
	if err := u.pages.part.ExecuteTemplate(&buf, name, data); err != nil {
		u.cfg.Logger.Error("ui: render fragment", "part", name, "err", err)
		http.Error(w, "the fragment could not be made", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(buf.Bytes())
}

// renderError shows msg on a page of its own.
func (u *UI) renderError(w http.ResponseWriter, r *http.Request, s *session, code int, msg string) {
	u.render(w, r, code, "error", &view{Title: http.StatusText(code), Session: s, Data: msg})
}
