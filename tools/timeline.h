// Phase timelines as an SVG picture: several lanes (cold boot, restore, a
// burst of replicas...) on one time axis, each phase a bar labelled with its
// name and duration, so a person sees where the seconds go. Pure string
// building, no external dependencies; the output is well-formed SVG 1.1.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "hotboot/status.h"

namespace hotboot::cli {

// One phase of a lane, in seconds from the lane's own zero (usually the
// moment the command or process started). Phases may overlap or leave gaps;
// a phase with end_s < start_s is drawn with zero width.
struct Phase {
  std::string name;  // also picks the colour: the same name is the same colour in every lane
  double start_s = 0;
  double end_s = 0;
};

struct Lane {
  std::string label;  // left of the lane, e.g. "cold boot" or "restore (fresh host)"
  std::vector<Phase> phases;
  // Drawn at the lane's end as its total; negative: the latest end_s of its phases.
  double total_s = -1;
  // Optional small text under the label, e.g. "verified"; '\n' starts a new
  // line. The label column is about 180 px: some 28 characters a line.
  std::string note;
};

struct TimelineOptions {
  std::string title = "hotboot: where the seconds go";
  std::string subtitle;    // optional second line under the title (host, preset...)
  int width_px = 1000;     // whole picture; the plot area is what the lane labels leave
  double axis_max_s = 0;   // 0: fit the longest lane (rounded up to a tick)
  // Lanes shorter than a fifth of the axis (a restore beside a cold boot) are
  // drawn again below, on an axis of their own, so their phases can be read.
  bool zoom_short_lanes = true;
};

// The SVG document (UTF-8). Text is XML-escaped; lanes are drawn in order,
// top to bottom. An empty lane list still yields a valid picture (title only).
std::string RenderTimelineSvg(const std::vector<Lane>& lanes, const TimelineOptions& options);

// Writes `svg` to `path` atomically: an O_EXCL temporary beside it, fsync,
// rename into place (mode 0644).
Status WriteTimelineFile(const std::string& path, const std::string& svg);

// ---- Lanes from what hotboot measures (milliseconds in, seconds out).

// hotboot-server's boot phases from its /metrics text
// (hotboot_boot_phase_seconds{phase="..."} V), in milliseconds by phase.
std::map<std::string, double> BootPhasesFromMetrics(const std::string& prometheus_text);

// A cold boot from those phases: process start to listening, weight read,
// convert, the device's load phases, autotune, first inference, warmup. The
// server's clock starts at its own start; `observed_ready_ms` (> 0: the
// time to ready as whoever launched it saw it) moves what came before --
// fork, exec, linking, and the readiness poll -- into "process start".
Lane ColdBootLane(const std::string& label, const std::map<std::string, double>& boot_phases_ms,
                  double observed_ready_ms);

// A restore from `hotboot restore --json`'s "timings_ms": startup, open +
// check, unpack, weights, criu restore, the GPU steps, the wait for the GPU
// weights handoff (weights_handoff_wait), after_restore, verify, one after
// the other; work that ran beside them (weights_overlapped,
// gpu_check_overlapped, and weights_handoff from the end of the check) on a
// second track. Total: its "total".
Lane RestoreLane(const std::string& label, const std::map<std::string, double>& timings_ms);

// The colour a phase name is drawn in ("#rrggbb"): a fixed palette entry for
// the well-known phases, otherwise one chosen by a hash of the name.
std::string PhaseColour(const std::string& name);

}  // namespace hotboot::cli
