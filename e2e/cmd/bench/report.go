package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/procmig/migrate/e2e/cluster"
)

// Run is one run: a live migration or an offline dump and restore.
type Run struct {
	Scenario string `json:"scenario"`
	Mode     string `json:"mode"` // "live" or "offline"
	Index    int    `json:"run"`
	Warmup   bool   `json:"warmup"`
	From     string `json:"from"`
	To       string `json:"to"`
	Error    string `json:"error,omitempty"`

	// TotalMS: live, the migration as migrate measured it; offline, the
	// dump's total and the restore's.
	TotalMS float64 `json:"total_ms"`
	// DowntimeMS: live, the freeze to the target's "resumed" as the
	// source measured it; offline, the dump's frozen time and the
	// restore's time (the process runs nowhere in between).
	DowntimeMS float64 `json:"downtime_ms"`
	// TargetDowntimeMS is the target's own measure (live): from the
	// state's arrival to the process running.
	TargetDowntimeMS float64 `json:"target_downtime_ms,omitempty"`
	// FinalRoundMS is the frozen round's page transfer (live).
	FinalRoundMS float64 `json:"final_round_ms,omitempty"`
	// PrecopyHoldMS is the longest single stop of the process while it
	// ran (pre-copy's scans and throttle; live): a pause its clients
	// see on top of the downtime.
	PrecopyHoldMS float64 `json:"precopy_hold_ms,omitempty"`
	// HookPostDumpMS and HookPreResumeMS are the migration hooks that
	// move the service address (live, with hooks): post-dump on the
	// source, pre-resume on the target; both run inside the downtime.
	HookPostDumpMS  float64 `json:"hook_post_dump_ms,omitempty"`
	HookPreResumeMS float64 `json:"hook_pre_resume_ms,omitempty"`
	DumpFrozenMS    float64 `json:"dump_frozen_ms,omitempty"`
	RestoreMS       float64 `json:"restore_ms,omitempty"`
	// CommandMS is the wall time of the migrate command(s), process
	// start and connection setup included.
	CommandMS float64 `json:"command_ms"`
	// BytesWire: live, the bytes on the wire; offline, the image's page
	// streams.
	BytesWire      uint64  `json:"bytes_wire"`
	BytesRaw       uint64  `json:"bytes_raw"`
	RSSBytes       uint64  `json:"rss_bytes"`
	Processes      int     `json:"processes,omitempty"` // of the tree moved (live)
	WireRSS        float64 `json:"wire_rss"`
	ThroughputMBps float64 `json:"throughput_mb_s"` // bytes_wire / total_ms, in 10^6 bytes a second
	Rounds         int     `json:"rounds"`
	Stop           string  `json:"stop,omitempty"` // why pre-copy ended
	Tracker        string  `json:"tracker,omitempty"`
	Codec          string  `json:"codec,omitempty"`
	// SourceMaxRSSMiB and TargetMaxRSSMiB are the peak resident memory of
	// migrate --to and of the target's migrate serve during the run
	// (live): what moving the process costs in memory on each side.
	SourceMaxRSSMiB float64 `json:"source_max_rss_mib,omitempty"`
	TargetMaxRSSMiB float64 `json:"target_max_rss_mib,omitempty"`

	Client              bool    `json:"-"`
	ClientGapMS         float64 `json:"client_gap_ms,omitempty"`
	ClientBaselineGapMS float64 `json:"client_baseline_gap_ms,omitempty"`
	ClientErrors        int     `json:"client_errors,omitempty"`
	ClientRequests      int     `json:"client_requests,omitempty"`
	ClientLastError     string  `json:"client_last_error,omitempty"`

	RoundDetails []cluster.Round `json:"round_details,omitempty"`
	// FrozenSteps, TargetSteps and HandoffSteps are the live report's
	// (the last two if this migrate reports them): where the downtime went.
	FrozenSteps  []step `json:"frozen_steps,omitempty"`
	TargetSteps  []step `json:"target_steps,omitempty"`
	HandoffSteps []step `json:"handoff_steps,omitempty"`
	// ProcessSteps are the live report's steps of each process of the
	// frozen window's work (its read and injected phases).
	ProcessSteps []processSteps `json:"process_steps,omitempty"`
	// FinalRoundSteps are the live report's steps of the final round,
	// which runs beside the frozen window's read, network and injected
	// phases (FrozenSteps has the wait for it).
	FinalRoundSteps []step `json:"final_round_steps,omitempty"`
	DumpSteps       []step `json:"dump_steps,omitempty"`
	RestoreSteps    []step `json:"restore_steps,omitempty"`
}

type step struct {
	Name string  `json:"name"`
	MS   float64 `json:"ms"`
}

type processSteps struct {
	PID   int    `json:"pid"`
	Steps []step `json:"steps"`
}

// summed are the steps of every process, each step's time summed over
// the processes.
func summed(ps []processSteps) []step {
	var out []step
	at := map[string]int{}
	for _, p := range ps {
		for _, st := range p.Steps {
			i, ok := at[st.Name]
			if !ok {
				i = len(out)
				at[st.Name] = i
				out = append(out, step{Name: st.Name})
			}
			out[i].MS += st.MS
		}
	}
	return out
}

// dumpReport and restoreReport are the parts of `migrate dump --json` and
// `migrate restore --json` used here.
type dumpReport struct {
	BytesRaw   uint64          `json:"bytes_raw"`
	BytesImage uint64          `json:"bytes_image"`
	Codec      string          `json:"codec"`
	FrozenMS   float64         `json:"frozen_ms"`
	TotalMS    float64         `json:"total_ms"`
	Rounds     []cluster.Round `json:"rounds"`
	Steps      []step          `json:"steps"`
}

type restoreReport struct {
	TotalMS float64 `json:"total_ms"`
	Steps   []step  `json:"steps"`
}

func (r *Run) fromLive(res *cluster.Result) {
	r.TotalMS, r.DowntimeMS, r.TargetDowntimeMS = res.TotalMS, res.DowntimeMS, res.TargetDowntimeMS
	r.BytesWire, r.BytesRaw, r.RSSBytes = res.BytesWire, res.BytesRaw, res.RSSBytes
	r.Processes = res.Processes
	r.Rounds, r.RoundDetails = len(res.Rounds), res.Rounds
	r.Tracker, r.Codec = res.Tracker, res.Codec
	for _, rd := range res.Rounds {
		if rd.Frozen {
			r.FinalRoundMS = rd.MS
		} else {
			r.PrecopyHoldMS = max(r.PrecopyHoldMS, rd.MaxHoldMS)
		}
		if rd.Stop != "" {
			r.Stop = rd.Stop
		}
	}
	// The report's steps, which cluster.Result leaves out.
	var extra struct {
		FrozenSteps  []step         `json:"frozen_steps"`
		TargetSteps  []step         `json:"target_steps"`
		HandoffSteps []step         `json:"handoff_steps"`
		ProcessSteps []processSteps `json:"process_steps"`
		FinalRound   []step         `json:"final_round_steps"`
	}
	if json.Unmarshal([]byte(res.Stdout), &extra) == nil {
		r.FrozenSteps, r.TargetSteps, r.HandoffSteps = extra.FrozenSteps, extra.TargetSteps, extra.HandoffSteps
		r.ProcessSteps, r.FinalRoundSteps = extra.ProcessSteps, extra.FinalRound
	}
	r.ratios()
}

func (r *Run) fromOffline(d *dumpReport, rr *restoreReport) {
	r.TotalMS = d.TotalMS + rr.TotalMS
	r.DumpFrozenMS, r.RestoreMS = d.FrozenMS, rr.TotalMS
	r.DowntimeMS = d.FrozenMS + rr.TotalMS
	r.BytesWire, r.BytesRaw, r.Codec = d.BytesImage, d.BytesRaw, d.Codec
	r.Rounds, r.RoundDetails = len(d.Rounds), d.Rounds
	r.DumpSteps, r.RestoreSteps = d.Steps, rr.Steps
	r.ratios()
}

func (r *Run) ratios() {
	if r.RSSBytes > 0 {
		r.WireRSS = float64(r.BytesWire) / float64(r.RSSBytes)
	}
	if r.TotalMS > 0 {
		r.ThroughputMBps = float64(r.BytesWire) / 1e6 / (r.TotalMS / 1000)
	}
}

// log prints a line about the run on stderr.
func (r *Run) log() {
	what := fmt.Sprintf("%s %s run %d %s->%s", r.Scenario, r.Mode, r.Index, r.From, r.To)
	if r.Warmup {
		what += " (warm-up)"
	}
	if r.Error != "" {
		say("%s: FAILED: %s", what, r.Error)
		return
	}
	line := fmt.Sprintf("%s: total %.0f ms, downtime %.1f ms", what, r.TotalMS, r.DowntimeMS)
	if r.Mode == "live" {
		line += fmt.Sprintf(" (target %.1f ms, final round %.1f ms), %d rounds (%s)", r.TargetDowntimeMS, r.FinalRoundMS, r.Rounds, r.Stop)
	} else {
		line += fmt.Sprintf(" (dump frozen %.0f + restore %.0f)", r.DumpFrozenMS, r.RestoreMS)
	}
	line += fmt.Sprintf(", %s (%.3f of RSS %s), %.0f MB/s", human(r.BytesWire), r.WireRSS, human(r.RSSBytes), r.ThroughputMBps)
	if r.Processes > 1 {
		line += fmt.Sprintf(", %d processes", r.Processes)
	}
	if r.Client {
		line += fmt.Sprintf("; client: gap %.1f ms (%.1f before), %d errors, %d requests", r.ClientGapMS, r.ClientBaselineGapMS, r.ClientErrors, r.ClientRequests)
	}
	say("%s", line)
}

// metric is a row of the table: a figure of a run.
type metric struct {
	key, label, format string
	live, offline      bool // which modes have it
	client             bool // only the scenarios with a client
	get                func(*Run) float64
}

var metrics = []metric{
	{key: "total_ms", label: "total ms", format: "%.0f", live: true, offline: true, get: func(r *Run) float64 { return r.TotalMS }},
	{key: "downtime_ms", label: "downtime ms", format: "%.1f", live: true, offline: true, get: func(r *Run) float64 { return r.DowntimeMS }},
	{key: "source_frozen_ms", label: "  source frozen ms", format: "%.1f", live: true, get: func(r *Run) float64 { return sum(r.FrozenSteps) }},
	{key: "final_round_ms", label: "    final round ms", format: "%.1f", live: true, get: func(r *Run) float64 { return r.FinalRoundMS }},
	{key: "handoff_ms", label: "  handoff ms (rest)", format: "%.1f", live: true, get: func(r *Run) float64 { return r.DowntimeMS - sum(r.FrozenSteps) - r.TargetDowntimeMS }},
	{key: "target_downtime_ms", label: "  target's measure ms", format: "%.1f", live: true, get: func(r *Run) float64 { return r.TargetDowntimeMS }},
	{key: "hook_pre_resume_ms", label: "    pre-resume hook ms", format: "%.1f", live: true, get: func(r *Run) float64 { return r.HookPreResumeMS }},
	{key: "precopy_hold_ms", label: "pre-copy longest stop ms", format: "%.1f", live: true, get: func(r *Run) float64 { return r.PrecopyHoldMS }},
	{key: "dump_frozen_ms", label: "  dump frozen ms", format: "%.0f", offline: true, get: func(r *Run) float64 { return r.DumpFrozenMS }},
	{key: "restore_ms", label: "  restore ms", format: "%.0f", offline: true, get: func(r *Run) float64 { return r.RestoreMS }},
	{key: "client_gap_ms", label: "client max gap ms", format: "%.1f", live: true, offline: true, client: true, get: func(r *Run) float64 { return r.ClientGapMS }},
	{key: "client_baseline_gap_ms", label: "  gap before the move", format: "%.1f", live: true, offline: true, client: true, get: func(r *Run) float64 { return r.ClientBaselineGapMS }},
	{key: "client_errors", label: "client errors", format: "%.0f", live: true, offline: true, client: true, get: func(r *Run) float64 { return float64(r.ClientErrors) }},
	{key: "wire_mib", label: "wire MiB (image)", format: "%.1f", live: true, offline: true, get: func(r *Run) float64 { return float64(r.BytesWire) / (1 << 20) }},
	{key: "wire_rss", label: "  / RSS", format: "%.3f", live: true, offline: true, get: func(r *Run) float64 { return r.WireRSS }},
	{key: "rss_mib", label: "RSS MiB", format: "%.0f", live: true, offline: true, get: func(r *Run) float64 { return float64(r.RSSBytes) / (1 << 20) }},
	{key: "processes", label: "processes", format: "%.0f", live: true, get: func(r *Run) float64 { return float64(r.Processes) }},
	{key: "rounds", label: "rounds", format: "%.0f", live: true, get: func(r *Run) float64 { return float64(r.Rounds) }},
	{key: "source_max_rss_mib", label: "migrate --to peak RSS MiB", format: "%.0f", live: true, get: func(r *Run) float64 { return r.SourceMaxRSSMiB }},
	{key: "target_max_rss_mib", label: "migrate serve peak RSS MiB", format: "%.0f", live: true, get: func(r *Run) float64 { return r.TargetMaxRSSMiB }},
	{key: "throughput_mb_s", label: "throughput MB/s", format: "%.0f", live: true, offline: true, get: func(r *Run) float64 { return r.ThroughputMBps }},
}

// stat is a metric over the counted runs.
type stat struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

func statOf(v []float64) stat {
	v = slices.Clone(v)
	slices.Sort(v)
	n := len(v)
	med := v[n/2]
	if n%2 == 0 {
		med = (v[n/2-1] + v[n/2]) / 2
	}
	return stat{Median: med, Min: v[0], Max: v[n-1]}
}

// modeSummary sums up the counted runs of a scenario in one mode.
type modeSummary struct {
	Counted int             `json:"counted"` // runs not warm-up, without error
	Failed  int             `json:"failed"`  // runs not warm-up, with an error
	Metrics map[string]stat `json:"metrics,omitempty"`
	// Steps are the medians of the downtime's steps (live: the source's
	// frozen steps, the handoff's, the target's; offline: the dump's and
	// the restore's), by part, in their order.
	Steps map[string][]stepStat `json:"steps,omitempty"`
}

type stepStat struct {
	Name   string  `json:"name"`
	Median float64 `json:"median_ms"`
}

// stepParts says which steps of a run make which part, per mode.
var stepParts = map[string][]struct {
	part  string
	steps func(*Run) []step
}{
	"live": {
		{"source frozen", func(r *Run) []step { return r.FrozenSteps }},
		{"source frozen, each process's summed", func(r *Run) []step { return summed(r.ProcessSteps) }},
		{"final round, beside the read, network and injected phases", func(r *Run) []step { return r.FinalRoundSteps }},
		{"handoff", func(r *Run) []step { return r.HandoffSteps }},
		{"target", func(r *Run) []step { return r.TargetSteps }},
	},
	"offline": {
		{"dump", func(r *Run) []step { return r.DumpSteps }},
		{"restore", func(r *Run) []step { return r.RestoreSteps }},
	},
}

// stepMedians returns the median of each step over runs, in the order
// the steps first appear.
func stepMedians(runs []*Run, steps func(*Run) []step) []stepStat {
	var names []string
	vals := map[string][]float64{}
	for _, r := range runs {
		for _, st := range steps(r) {
			if _, ok := vals[st.Name]; !ok {
				names = append(names, st.Name)
			}
			vals[st.Name] = append(vals[st.Name], st.MS)
		}
	}
	var out []stepStat
	for _, n := range names {
		out = append(out, stepStat{Name: n, Median: statOf(vals[n]).Median})
	}
	return out
}

// targetResult is a target and whether the live runs met it.
type targetResult struct {
	Metric string  `json:"metric"`
	Max    float64 `json:"max"`
	On     string  `json:"on"` // "median" or "worst run"
	Value  float64 `json:"value"`
	Met    bool    `json:"met"`
}

type scenarioReport struct {
	Name        string         `json:"name"`
	Description string         `json:"description"`
	Live        *modeSummary   `json:"live"`
	Offline     *modeSummary   `json:"offline,omitempty"`
	Targets     []targetResult `json:"targets,omitempty"`
	Runs        []*Run         `json:"runs"`

	sc     *scenario
	client bool
}

type report struct {
	Command     string            `json:"command"`
	Started     time.Time         `json:"started"`
	DurationS   float64           `json:"duration_s"`
	Interrupted bool              `json:"interrupted,omitempty"`
	Migrate     string            `json:"migrate"` // its version
	Kernel      string            `json:"kernel"`
	CPUs        int               `json:"cpus"`
	LoadBefore  string            `json:"load_before"` // /proc/loadavg: 1, 5, 15 minutes
	LoadAfter   string            `json:"load_after"`
	Runs        int               `json:"runs"`
	Warmup      int               `json:"warmup"`
	Hooks       bool              `json:"hooks"` // the migration hooks move the service address
	Scenarios   []*scenarioReport `json:"scenarios"`
}

func (b *bench) newReport(picked []*scenario) *report {
	rep := &report{
		Command:    strings.Join(os.Args, " "),
		Started:    time.Now(),
		CPUs:       runtime.NumCPU(),
		LoadBefore: loadAvg(),
		Runs:       *runs,
		Warmup:     *warmup,
		Hooks:      b.c.Hooks,
	}
	if out, err := exec.Command(b.c.MigrateBin, "version").Output(); err == nil {
		rep.Migrate = strings.TrimSpace(string(out))
	}
	if out, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		rep.Kernel = strings.TrimSpace(string(out))
	}
	for _, sc := range picked {
		rep.Scenarios = append(rep.Scenarios, &scenarioReport{Name: sc.name, Description: sc.describe(), sc: sc, client: sc.client})
	}
	return rep
}

func (rep *report) add(r *Run) {
	for _, s := range rep.Scenarios {
		if s.Name == r.Scenario {
			s.Runs = append(s.Runs, r)
		}
	}
}

// finish sums the runs up.
func (rep *report) finish(d time.Duration, interrupted bool) {
	rep.DurationS = d.Seconds()
	rep.Interrupted = interrupted
	rep.LoadAfter = loadAvg()
	for _, s := range rep.Scenarios {
		s.Live = s.summary("live")
		if *offline {
			s.Offline = s.summary("offline")
		}
		for _, t := range s.sc.targets {
			st, ok := s.Live.Metrics[t.metric]
			if !ok {
				continue
			}
			tr := targetResult{Metric: t.metric, Max: t.max, On: "median", Value: st.Median}
			if t.worst {
				tr.On, tr.Value = "worst run", st.Max
			}
			tr.Met = tr.Value <= t.max
			s.Targets = append(s.Targets, tr)
		}
	}
}

func (s *scenarioReport) summary(mode string) *modeSummary {
	m := &modeSummary{Metrics: map[string]stat{}}
	var counted []*Run
	for _, r := range s.Runs {
		switch {
		case r.Mode != mode || r.Warmup:
		case r.Error != "":
			m.Failed++
		default:
			counted = append(counted, r)
		}
	}
	m.Counted = len(counted)
	if len(counted) == 0 {
		return m
	}
	for _, mt := range metrics {
		if (mode == "live" && !mt.live) || (mode == "offline" && !mt.offline) || (mt.client && !s.client) {
			continue
		}
		var v []float64
		for _, r := range counted {
			v = append(v, mt.get(r))
		}
		m.Metrics[mt.key] = statOf(v)
	}
	m.Steps = map[string][]stepStat{}
	for _, p := range stepParts[mode] {
		if st := stepMedians(counted, p.steps); len(st) > 0 {
			m.Steps[p.part] = st
		}
	}
	return m
}

// print writes the table.
func (rep *report) print(w io.Writer) {
	fmt.Fprintf(w, "\nmigration benchmark: %s\n", rep.Command)
	fmt.Fprintf(w, "%s, Linux %s, %d CPUs; load average %s before, %s after; %.0f s",
		rep.Migrate, rep.Kernel, rep.CPUs, rep.LoadBefore, rep.LoadAfter, rep.DurationS)
	if rep.Interrupted {
		fmt.Fprint(w, " (interrupted)")
	}
	fmt.Fprintf(w, "\nmedian (min-max) of %d runs after %d warm-up; live: a fresh process on A or B in turn, migrated to the other node;\n", rep.Runs, rep.Warmup)
	fmt.Fprintf(w, "live downtime: freeze to resumed (the last process let go) as the source saw it = source frozen (freeze to state ready, final round included)\n")
	fmt.Fprintf(w, "  + handoff (the rest: state sent behind the pages still in flight, commit, the target's answer) + the target's measure (state in to running)\n")
	fmt.Fprintf(w, "offline: a fresh process dumped (migrate dump, image on tmpfs) and restored on its node; downtime = dump frozen + restore\n")
	const lw, cw, tw = 24, 28, 18
	for _, s := range rep.Scenarios {
		if len(s.Runs) == 0 {
			continue // not reached (interrupted)
		}
		fmt.Fprintf(w, "\n%s: %s\n", s.Name, s.Description)
		fmt.Fprintf(w, "%-*s%-*s%-*s%s\n", lw, "", cw, "live: median (min-max)", tw, "target", "offline: median (min-max)")
		for _, mt := range metrics {
			if mt.client && !s.client {
				continue
			}
			cell := func(m *modeSummary, want bool) string {
				if m == nil || !want {
					return ""
				}
				st, ok := m.Metrics[mt.key]
				if !ok {
					return "-"
				}
				f := mt.format
				return fmt.Sprintf(f+" ("+f+"-"+f+")", st.Median, st.Min, st.Max)
			}
			tgt := ""
			for _, t := range s.Targets {
				if t.Metric == mt.key {
					tgt = fmt.Sprintf("<= %g", t.Max)
					if t.On != "median" {
						tgt = fmt.Sprintf("%g every run", t.Max)
					}
					if t.Met {
						tgt += " met"
					} else {
						tgt += " MISSED"
					}
				}
			}
			fmt.Fprintf(w, "%-*s%-*s%-*s%s\n", lw, mt.label, cw, cell(s.Live, mt.live), tw, tgt, cell(s.Offline, mt.offline))
		}
		runsCell := func(m *modeSummary) string {
			if m == nil {
				return ""
			}
			return fmt.Sprintf("%d ok, %d failed", m.Counted, m.Failed)
		}
		fmt.Fprintf(w, "%-*s%-*s%-*s%s\n", lw, "runs", cw, runsCell(s.Live), tw, "", runsCell(s.Offline))
		for _, mode := range []struct {
			name string
			m    *modeSummary
		}{{"live", s.Live}, {"offline", s.Offline}} {
			if mode.m == nil || len(mode.m.Steps) == 0 {
				continue
			}
			fmt.Fprintf(w, "  %s steps, median ms:", mode.name)
			for _, p := range stepParts[mode.name] {
				if st := mode.m.Steps[p.part]; len(st) > 0 {
					var parts []string
					for _, x := range st {
						parts = append(parts, fmt.Sprintf("%s %.1f", x.Name, x.Median))
					}
					fmt.Fprintf(w, "\n    %s: %s", p.part, strings.Join(parts, ", "))
				}
			}
			fmt.Fprintln(w)
		}
		for _, r := range s.Runs {
			if r.Error != "" {
				fmt.Fprintf(w, "  %s run %d failed: %s\n", r.Mode, r.Index, firstLine(r.Error))
			}
		}
	}
	rep.printTrees(w)
	var met, all int
	var missed []string
	for _, s := range rep.Scenarios {
		for _, t := range s.Targets {
			all++
			if t.Met {
				met++
			} else {
				missed = append(missed, fmt.Sprintf("%s %s %.3g > %g", s.Name, t.Metric, t.Value, t.Max))
			}
		}
	}
	fmt.Fprintf(w, "\ntargets (live; the median, the worst run for errors): %d of %d met", met, all)
	if len(missed) > 0 {
		fmt.Fprintf(w, "; missed: %s", strings.Join(missed, ", "))
	}
	fmt.Fprintln(w)
}

// printTrees sets each tree's downtime next to the single processes' of
// the same run (issue 13's aim: within twice a single process's of the
// same memory size).
func (rep *report) printTrees(w io.Writer) {
	type sized struct {
		name            string
		procs, rss, dms float64
	}
	of := func(s *scenarioReport) (sized, bool) {
		if s.Live == nil || s.Live.Counted == 0 {
			return sized{}, false
		}
		m := s.Live.Metrics
		return sized{s.Name, m["processes"].Median, m["rss_mib"].Median, m["downtime_ms"].Median}, m["downtime_ms"].Median > 0
	}
	var trees, singles []sized
	for _, s := range rep.Scenarios {
		if x, ok := of(s); ok {
			if s.sc.tree {
				trees = append(trees, x)
			} else {
				singles = append(singles, x)
			}
		}
	}
	if len(trees) == 0 || len(singles) == 0 {
		return
	}
	fmt.Fprintf(w, "\ntrees next to single processes (live downtime, medians):\n")
	for _, t := range trees {
		var parts []string
		for _, s := range singles {
			parts = append(parts, fmt.Sprintf("%.2fx %s's (%.0f MiB, %.1f ms)", t.dms/s.dms, s.name, s.rss, s.dms))
		}
		fmt.Fprintf(w, "  %s (%.0f processes, %.0f MiB) %.1f ms = %s\n", t.name, t.procs, t.rss, t.dms, strings.Join(parts, ", "))
	}
}

// write writes the report as JSON to path.
func (rep *report) write(path string) error {
	data, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

// loadAvg returns the 1, 5 and 15 minute load averages: the machine is
// shared, and the figures depend on it.
func loadAvg() string {
	data, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func sum(steps []step) float64 {
	var t float64
	for _, s := range steps {
		t += s.MS
	}
	return t
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func human(b uint64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(b)/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(b)/(1<<10))
	}
	return fmt.Sprintf("%d B", b)
}
