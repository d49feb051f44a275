// Package filesync carries the files a live migration's process writes to
// a target that does not share them: the question whether the target sees
// the same files (Query, Answer, Shared) and the stream that copies the
// trees named with `migrate --to --sync PATH` (Sender on the source,
// Applier on the target). source and target both use it; it knows no
// process, only paths and files.
//
// # Same file or not
//
// Before pre-copy the source sends, for each regular file its processes
// hold open for writing (or map shared and writable), a Probe: the path,
// the inode number, size and modification time, and the SHA-256 of a
// sample (the first SampleLen bytes). The target opens the path without
// following any symlink (openat2 RESOLVE_NO_SYMLINKS), looks at what it
// finds (never writes, reads the sample only of a regular file with the
// probe's inode number) and answers a Seen for each. The source, which
// took the file's state again after the answer, calls the file shared
// when the target saw the same inode number, a size and a time between
// its two looks (a log keeps growing meanwhile), and the same sample.
// Between two real hosts the inode numbers agree only on shared storage
// (NFS and the like give the server's); device numbers never do, so they
// are not compared. A file the process holds on a private filesystem of
// the source, or a copy on the target, is not the same file.
//
// # The sync stream
//
// One stream of the session (transport.KindFiles), from the source:
//
//	stream := magic "MGSYNC1\n" record*
//	record := type u8 | length u32 LE | payload[length]   (length <= MaxRecord)
//	  1 file   JSON Header: a file or directory of a synced tree; the
//	           block records that follow, up to the next file, round or
//	           end record, are its contents
//	  2 block  offset u64 LE | data (1..BlockSize bytes)
//	  3 round  round u32 LE: every record before it is written
//	  4 end    empty: the last round (the frozen window's); nothing follows
//
// The first round sends every file whole, later ones the blocks whose
// SHA-256 changed (and the new size), the end record the changes made
// until the freeze. Every path must lie under one of the roots the first
// layout declared (handoff.LiveLayout.Sync), be absolute and clean (no
// "..", no NUL); the target opens each directory below the root with
// openat2 RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS, so no symlink on the
// target leads out of the root either.
//
// # On the target
//
// A file is written to a staging file beside it (".migrate-sync-TAG-N",
// made with O_EXCL, mode 0600, root's), never to the file in place; a
// file found at the path must be a regular file of the same owner as the
// source's (a file of someone else is refused, not taken over). At the
// end record, in the frozen window, Commit gives each staging file the
// source's owner, then its mode (so set-id bits are the original's, and
// only with its owner), then its times, and renames it over the path:
// the restore opens the source's files as they were at the freeze.
// Discard, before Commit, removes the staging files and the directories
// it created; after Commit the files stay (the target's earlier files at
// those paths are gone).
package filesync
