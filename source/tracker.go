package source

import "github.com/procmig/migrate/source/track"

// The dirty trackers of pre-copy are in source/track; this package uses
// them through track.New and the Tracker interfaces. These names keep
// DumpOptions.Tracker and the reports in this package's terms.

// Tracker names for DumpOptions.Tracker and MigrateOptions.Tracker.
const (
	TrackerAuto      = track.Auto
	TrackerUffdWP    = track.UffdWP
	TrackerSoftDirty = track.SoftDirty
	TrackerHash      = track.Hash
)

// TrackerNames lists the tracker names the options accept, "auto" first,
// then the backends from best to last resort.
func TrackerNames() []string { return track.Names() }

// PageRange is a run of pages [Start, End), page aligned.
type PageRange = track.PageRange

// Tracker is a dirty-page tracker.
type Tracker = track.Tracker
