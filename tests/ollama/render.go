// Renders an Ollama Modelfile TEMPLATE for a chat request the way Ollama's server does, with Go's
// own text/template: the Modelfile's SYSTEM put first when the request has no system message,
// consecutive messages of one role joined, the template executed with missingkey=zero over
// System, Messages and an empty Response.
//
//	echo '{"template": "...", "system": "...", "messages": [{"role": "user", "content": "Hi"}]}' | go run render.go
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

type message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type request struct {
	Template string    `json:"template"`
	System   string    `json:"system"`
	Messages []message `json:"messages"`
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fmt.Fprintln(os.Stderr, "request:", err)
		os.Exit(2)
	}
	msgs := req.Messages
	if req.System != "" && (len(msgs) == 0 || msgs[0].Role != "system") {
		msgs = append([]message{{Role: "system", Content: req.System}}, msgs...)
	}
	var system []string
	var joined []*message
	for i := range msgs {
		if msgs[i].Role == "system" {
			system = append(system, msgs[i].Content)
		}
		if n := len(joined); n > 0 && joined[n-1].Role == msgs[i].Role {
			joined[n-1].Content += "\n\n" + msgs[i].Content
		} else {
			joined = append(joined, &msgs[i])
		}
	}
	funcs := template.FuncMap{"json": func(v any) string { b, _ := json.Marshal(v); return string(b) }}
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(req.Template)
	if err != nil {
		fmt.Fprintln(os.Stderr, "template:", err)
		os.Exit(1)
	}
	data := map[string]any{"System": strings.Join(system, "\n\n"), "Messages": joined, "Response": ""}
	if err := tmpl.Execute(os.Stdout, data); err != nil {
		fmt.Fprintln(os.Stderr, "execute:", err)
		os.Exit(1)
	}
}
