package proc

import (
	"strings"
	"testing"
)

func TestParseStatRecorded(t *testing.T) {
	st, err := ParseStat(readTestdata(t, "recorded/stat"))
	if err != nil {
		t.Fatal(err)
	}
	want := Stat{
		PID: 4722, Comm: "a) (b c)", State: 'R', PPID: 4672, PGRP: 4672,
		Session: 2397, TTYNr: 0, TPGID: -1, Flags: 4194560, NumThreads: 2,
		StartTime: 34651, VSize: 11096064, RSS: 365, ExitSignal: 17,
		StartCode: 94344935673856, EndCode: 94344935678161, StartStack: 140722488193888,
		StartData: 94344935689672, EndData: 94344935690640, StartBrk: 94345910554624,
		ArgStart: 140722488199843, ArgEnd: 140722488199864,
		EnvStart: 140722488199864, EnvEnd: 140722488201196,
		Priority: 20, Processor: 1,
	}
	if *st != want {
		t.Errorf("got  %+v\nwant %+v", *st, want)
	}

	// The second thread named itself "t\n\\) x(": raw in stat.
	st, err = ParseStat(readTestdata(t, "recorded/task_stat"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Comm != "t\n\\) x(" || st.PID != 4723 || st.State != 'S' || st.ExitSignal != -1 {
		t.Errorf("thread stat %+v", st)
	}

	st, err = ParseStat(readTestdata(t, "recorded/zombie_stat"))
	if err != nil {
		t.Fatal(err)
	}
	if st.State != 'Z' || st.PPID != 4722 || st.StartCode != 0 || st.ExitCode != 768 || st.Flags&PF_KTHREAD != 0 {
		t.Errorf("zombie stat %+v", st)
	}

	st, err = ParseStat(readTestdata(t, "recorded/kthread_stat"))
	if err != nil {
		t.Fatal(err)
	}
	if st.PID != 2 || st.Comm != "kthreadd" || st.Flags&PF_KTHREAD == 0 || st.VSize != 0 {
		t.Errorf("kthread stat %+v", st)
	}
}

func TestParseStatComm(t *testing.T) {
	for file, comm := range map[string]string{
		"hand/stat_parens":     ")) (a) b ((c)",
		"hand/stat_empty_comm": "",
		"hand/stat_newline":    "a\nb)",
	} {
		st, err := ParseStat(readTestdata(t, file))
		if err != nil {
			t.Errorf("%s: %v", file, err)
			continue
		}
		if st.Comm != comm || st.State != 'S' || st.RSS != -1 || st.StartData != 4 || st.EnvEnd != 10 {
			t.Errorf("%s: %+v", file, st)
		}
	}
}

func TestParseStatErrors(t *testing.T) {
	good := string(readTestdata(t, "hand/stat_parens"))
	fields := strings.Fields(good[strings.LastIndexByte(good, ')')+1:])
	with := func(i int, v string) string { // replace field i (proc(5) numbering)
		f := append([]string(nil), fields...)
		f[i-3] = v
		return "42 (x) " + strings.Join(f, " ") + "\n"
	}
	tests := []struct{ name, text, field string }{
		{"empty", "", "comm"},
		{"no comm", "42 S 1 1", "comm"},
		{"close before open", "42 )x( S", "comm"},
		{"pid", "4x2 (x) " + strings.Join(fields, " "), "pid"},
		{"short", "42 (x) S 1 2 3", "tty_nr"}, // fields 3-6 present
		{"state", with(3, "SS"), "state"},
		{"ppid", with(4, "-"), "ppid"},
		{"tpgid range", with(8, "99999999999"), "tpgid"},
		{"flags", with(9, "-1"), "flags"},
		{"rss", with(24, "1.5"), "rss"},
		{"policy", with(41, "4294967296"), "policy"},
		{"env_end", with(51, "x"), "env_end"},
		{"exit_code", with(52, ""), "exit_code"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseStat([]byte(tt.text))
			checkParseError(t, err, "stat", 0, tt.field)
		})
	}
}

func BenchmarkParseStat(b *testing.B) {
	data := readTestdata(b, "recorded/stat")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseStat(data); err != nil {
			b.Fatal(err)
		}
	}
}
