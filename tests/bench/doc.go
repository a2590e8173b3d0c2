// Package bench holds sockmesh's benchmarks (`make bench`). Each compares
// sockmesh against a baseline measured in the same run, interleaved round by
// round, and reports medians and ratios. They need root.
package bench
