package sockaddr

//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -cflags "-O2 -g -Wall -Werror -I../include -I/usr/include/x86_64-linux-gnu" -target bpfel -type svc_key -type svc_val -type svc_entry -type slot_key -type backend -type stat -type svc_flags -output-stem sockaddr bpf sockaddr.c
