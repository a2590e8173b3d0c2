// Command httpserver is a plain net/http server for telemetry tests: it
// prints its address, then serves /ok (200, "hello"), /slow (200 after
// 1 ms), /missing (404) and /fail (500).
package main

import (
	"fmt"
	"net"
	"net/http"
	"time"
)

func main() {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	fmt.Println(l.Addr())
	http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			fmt.Fprint(w, "hello")
		case "/slow":
			time.Sleep(time.Millisecond)
			fmt.Fprint(w, "hello")
		case "/fail":
			http.Error(w, "boom", http.StatusInternalServerError)
		default:
			http.NotFound(w, r)
		}
	}))
}
