# The one sockmesh binary in a small image. BPF objects are committed, so
# the build needs only Go (no clang). The control plane runs it as a
# non-root user (the Deployment sets it); the agent needs root and
# privileges (the DaemonSet sets them).
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -X main.version=${VERSION}" -o /out/sockmesh ./cmd/sockmesh

FROM gcr.io/distroless/static-debian12
COPY --from=build /out/sockmesh /usr/local/bin/sockmesh
ENTRYPOINT ["/usr/local/bin/sockmesh"]
