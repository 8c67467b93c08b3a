package jotunheim

import "bytes"

// ReadSpool reads a spool file's contents for the fuzz test: the number of
// messages it keeps, whether its tail was corrupt, and an error when it is
// not a spool file.
func ReadSpool(data []byte) (messages int, corruptTail bool, err error) {
	c, err := readSpool(bytes.NewReader(data))
	return len(c.recs), c.tail != nil, err
}
