package image

import (
	"bufio"
	"fmt"
	"io"
	"os"
)

// fileOutput is flatten's output to a file, through a buffer and
// earlyWriteback.
type fileOutput struct {
	f *os.File
	w *bufio.Writer
}

func newFileOutput(f *os.File) *fileOutput {
	return &fileOutput{f: f, w: bufio.NewWriterSize(&earlyWriteback{f: f}, 1<<20)}
}

func (o *fileOutput) Write(p []byte) (int, error) { return o.w.Write(p) }

// Flush writes what the buffer holds to the file.
func (o *fileOutput) Flush() error { return o.w.Flush() }

// Rewind empties the file, dropping what the buffer holds unwritten.
func (o *fileOutput) Rewind() error {
	o.w.Reset(&earlyWriteback{f: o.f})
	if err := o.f.Truncate(0); err != nil {
		return fmt.Errorf("truncating %s: %w", o.f.Name(), err)
	}
	if _, err := o.f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("seeking to the start of %s: %w", o.f.Name(), err)
	}
	return nil
}
