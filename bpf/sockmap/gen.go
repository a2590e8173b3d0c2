package sockmap

//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -cflags "-O2 -g -Wall -Werror -I../include -I/usr/include/x86_64-linux-gnu" -target bpfel -type sock_key -type sock_state -type fp_stats -type sock_flags -type target -type exe_key -type exe_verdict -type cgroup_state -type syn_key -type listener_key -type exec_event -output-stem sockmap bpf sockmap.c
