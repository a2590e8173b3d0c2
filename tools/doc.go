// Package tools pins third-party programs the tests run against sockmesh
// (grpcurl, ...), in a module of their own so their dependencies stay out of
// sockmesh's go.mod. Build one with: go build -C tools -o DIR PACKAGE.
package tools
