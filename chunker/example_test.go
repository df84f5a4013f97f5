package chunker_test

import (
	"bytes"
	"fmt"
	"io"
	"log"
	"math/rand/v2"

	"github.com/cairnbuild/cairn/chunker"
)

func Example() {
	layer := make([]byte, 2<<20)
	_, _ = rand.NewChaCha8([32]byte{}).Read(layer) // stands for a layer tar
	buf := make([]byte, 2*chunker.V1.Max)          // reuse it across layers
	c, err := chunker.New(bytes.NewReader(layer), chunker.V1, buf)
	if err != nil {
		log.Fatal(err)
	}
	for {
		ch, err := c.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			log.Fatal(err)
		}
		// ch.Data is valid until the next call to Next: hash it, store it.
		fmt.Println(ch.Offset, len(ch.Data))
	}
	// Output:
	// 0 199185
	// 199185 324424
	// 523609 416218
	// 939827 166964
	// 1106791 281970
	// 1388761 271348
	// 1660109 338664
	// 1998773 98379
}

func ExampleCut() {
	data := make([]byte, 3<<20) // zeros: no content-defined boundary, so Max
	for len(data) > 0 {
		n := chunker.Cut(data, chunker.V1)
		fmt.Println(n)
		data = data[n:]
	}
	// Output:
	// 1048576
	// 1048576
	// 1048576
}
