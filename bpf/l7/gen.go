package l7

//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -cflags "-O2 -g -Wall -Werror -I../include -I/usr/include/x86_64-linux-gnu" -target bpfel -type http_event -type http_stats -type http_stats_key -output-stem http bpf http.c
//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -cflags "-O2 -g -Wall -Werror -I../include -I/usr/include/x86_64-linux-gnu" -target bpfel -type proc_event -output-stem procs procs procs.c
