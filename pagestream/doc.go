// Package pagestream is the page stream format: a framed, checksummed,
// compressed stream of memory pages, and the Writer and Reader for it over
// any io.Writer and io.Reader. Checkpoints store it as pages.img; live
// migration sends it over the network.
//
// pagestream knows nothing of processes, ptrace or transports: it moves
// (round, address, pages) batches and barriers, nothing else. It must never
// import transport or yamux.
//
// # Stream layout
//
// All integers are little-endian. CRC means CRC32C (Castagnoli).
//
// A stream is a stream header followed by frames, the last of which is the
// end frame. The stream header (32 bytes):
//
//	off size field
//	  0    8 magic "MIGPAGES"
//	  8    2 version, 1
//	 10    2 flags, 0 (a reader rejects any bit it does not know)
//	 12    4 page size, 4096
//	 16    8 stream ID, random unless chosen by the writer
//	 24    4 reserved, 0
//	 28    4 CRC of bytes 0..27
//
// Each frame is a 40-byte frame header, a payload, and a 4-byte trailer:
//
//	off size field
//	  0    1 type: 1 pages, 2 barrier, 3 end
//	  1    1 codec of the stored pages: 0 none, 1 zstd, 2 s2 (0 unless pages)
//	  2    2 flags, 0
//	  4    4 round (0 in the end frame)
//	  8    8 sequence number: 0 for the first frame, then +1 per frame
//	 16    8 address of the first page (pages; else 0)
//	 24    4 pages in the frame, 1..MaxFramePages (pages; else 0)
//	 28    4 stored pages: pages that are not all zeros (pages; else 0)
//	 32    4 payload length
//	 36    4 CRC of bytes 0..35
//	 40    n payload
//	 40+n  4 trailer: CRC of bytes 0..40+n-1 (header and payload), computed
//	         starting from the previous frame's trailer CRC (for the first
//	         frame, from the stream header CRC) instead of from 0
//
// The trailer chains the frames: a frame dropped, repeated, reordered or
// taken from another stream fails the chain, and the sequence number says
// which (a header on its own is checked by its own CRC, so its fields can be
// trusted for the error message before the payload is read).
//
// Payload of a page frame, for pages P and stored pages S:
//
//	ceil(P/8) bytes  zero bitmap: bit i%8 of byte i/8 set means page i is all
//	                 zeros; bits past P are 0; exactly P-S bits are set
//	4 bytes          content CRC: CRC of the S stored pages, uncompressed, in
//	                 address order
//	rest             the S stored pages, in address order, compressed as one
//	                 piece by the codec: codec none is the S*4096 bytes; zstd
//	                 is one single-segment zstd frame with its content size;
//	                 s2 is one s2 block. A compressed piece is never empty and
//	                 always smaller than S*4096 bytes (the writer stores the
//	                 pages uncompressed when compression does not pay).
//
// All-zero pages are thus never compressed or stored; they cost one bit.
//
// A barrier frame has an empty payload. Its round says: every page of this
// round and of every earlier round came before. The end frame's payload (24
// bytes) is the totals: frames before the end frame, pages in all page
// frames, and zero pages among them. The end frame's trailer, being chained,
// is the running checksum of the whole stream.
//
// # Caps and checks
//
// The reader checks every length against its cap before it allocates or
// reads anything the length sizes: pages <= MaxFramePages (1 MiB of pages),
// stored <= pages, payload length <= ceil(P/8)+4+S*4096 (exactly that for
// codec none, less for the others), barrier payload 0, end payload 24. The
// address must be page aligned and addr+P*4096 <= 2^47. Decompression fills
// a buffer of exactly S*4096 bytes and must fill it completely (s2 and zstd
// state their decoded size, which is checked first); then the content CRC is
// checked.
//
// Rounds never go down. A barrier of round k closes round k and every round
// before it: a page frame or barrier of round <= k after it is out of order
// (ErrOutOfOrder).
//
// A reader returns io.EOF only after an end frame whose totals match what it
// read; a stream that stops anywhere else is truncated (ErrTruncated). It
// reads nothing past the end frame, so a stream can be followed by other
// data. Every decoding error is a *FrameError with the byte offset of the
// bad frame (0 for the stream header) and a sentinel error to test with
// errors.Is.
package pagestream
