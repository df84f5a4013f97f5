//go:build race

package recompress

const raceEnabled = true
