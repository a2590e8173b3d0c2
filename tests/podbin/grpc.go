package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
	_ "google.golang.org/grpc/xds" // registers the xds:/// resolver and balancers

	"github.com/sockmesh/sockmesh/tests/workload"
)

// testServer answers UnaryCall with its id, so a client can tell which
// backend it reached.
type testServer struct {
	testgrpc.UnimplementedTestServiceServer
	id string
}

func (s *testServer) UnaryCall(_ context.Context, req *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	if st := req.GetResponseStatus(); st.GetCode() != 0 {
		return nil, status.Error(codes.Code(st.GetCode()), st.GetMessage())
	}
	return &testgrpc.SimpleResponse{ServerId: s.id}, nil
}

func grpcServe(args []string) error {
	fs := flag.NewFlagSet("grpc-serve", flag.ExitOnError)
	id := fs.String("id", "", "server id")
	addr := fs.String("addr", ":50051", "listen address")
	printAddr := fs.Bool("print-addr", false, "print the address listened on first (for port 0)")
	fs.Parse(args)
	l, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	if *printAddr {
		fmt.Println(l.Addr())
	}
	gs := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(gs, &testServer{id: *id})
	go gs.Serve(l)
	workload.Ready()
	gs.Stop()
	return nil
}

// grpcCall makes n unary calls to target (e.g. xds:///name.ns.svc.cluster.local:80,
// with the bootstrap in GRPC_XDS_BOOTSTRAP_CONFIG) over one channel, and
// prints which servers answered. With -until, it keeps calling until a
// server of that id answers (or the timeout), for tests of updates.
func grpcCall(args []string) error {
	fs := flag.NewFlagSet("grpc-call", flag.ExitOnError)
	target := fs.String("target", "", "gRPC target")
	n := fs.Int("n", 10, "calls")
	timeout := fs.Duration("timeout", 20*time.Second, "overall")
	until := fs.String("until", "", "keep calling until this server answers")
	code := fs.Int("code", 0, "gRPC status code the server is asked to answer with")
	after := fs.Duration("after", 0, "wait before the first call")
	waitFor := fs.String("wait-for", "", "print ready, then wait until this file exists before the first call")
	fs.Parse(args)
	time.Sleep(*after)
	waitForFile(*waitFor)
	conn, err := grpc.NewClient(*target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	client := testgrpc.NewTestServiceClient(conn)
	res := Result{Servers: map[string]int{}, Peers: map[string]int{}, Errors: map[string]int{}}
	for i := 0; i < *n || *until != ""; i++ {
		req := &testgrpc.SimpleRequest{}
		if *code != 0 {
			req.ResponseStatus = &testgrpc.EchoStatus{Code: int32(*code), Message: "asked"}
		}
		r, err := client.UnaryCall(ctx, req, grpc.WaitForReady(true))
		if err != nil {
			res.Errors[status.Code(err).String()]++
			if ctx.Err() != nil {
				break
			}
			continue
		}
		res.Servers[r.GetServerId()]++
		if *until != "" && r.GetServerId() == *until {
			break
		}
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}
