"""An oscilloscope-like picture of a run, from its JSONL trace (CPython, matplotlib Agg).

    python -m tools.pilotsim plot TRACE.jsonl -o session.png

One shared time axis (simulated seconds), five panels: the CP plateaus as the board
measured them, PWM duty and the current it offers (as the EV reads it, Table A.8) against
the installation/cable limit, the charge state, the contactor's coil command and mirror
contact, and the phase currents. Active faults are shaded on every panel and named; the
Annex A sequences are drawn as bars from their start over their limit (green pass, red
fail), scenario steps as thin vertical lines.
"""
import json

from tools.pilotsim import annexa
from tools.pilotsim.model import offered_ma

STATE_ORDER = ("OFF", "A", "B1", "B2", "C1", "C2", "D1", "D2", "E", "F", "UNAVAILABLE")
PANELS = ("CP", "PWM", "State", "Contactor", "Current")


def read_trace(path):
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                raise ValueError("%s:%d: not a JSON trace record" % (path, n))
    if not any(r.get("k") == "tick" for r in records):
        raise ValueError("%s: no tick records: not a pilotsim trace" % path)
    return records


def _steps(ticks, end_s, value):
    """x, y for a step plot that holds each value until the next record (and to the end)."""
    xs = [r["t"] / 1000 for r in ticks] + [end_s]
    ys = [value(r) for r in ticks]
    ys.append(ys[-1])
    return xs, ys


def _limit_ms(limit):
    # "<= 100 ms", "<= 7500 ms (config)": a bar of that length; others are not drawn.
    parts = limit.split()
    if len(parts) >= 3 and parts[0] == "<=" and parts[2] == "ms":
        try:
            return int(parts[1])
        except ValueError:
            return None
    return None


def plot(records, path, title=None, checks=None):
    """Write the picture to `path` (PNG). Returns {panel: [series labels drawn]}."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ticks = [r for r in records if r.get("k") == "tick"]
    if not ticks:
        raise ValueError("no tick records to plot")
    start = next((r for r in records if r.get("k") == "start"), {})
    end = next((r for r in records if r.get("k") == "end"), None)
    end_s = (end["t"] if end else ticks[-1]["t"]) / 1000
    if checks is None:
        checks = annexa.analyse(records)
    drawn = {p: [] for p in PANELS}

    fig, axes = plt.subplots(len(PANELS), 1, sharex=True, figsize=(12, 10),
                             gridspec_kw={"height_ratios": (3, 3, 2, 1.4, 2.4)})
    ax_cp, ax_pwm, ax_st, ax_k, ax_i = axes

    def series(ax, panel, label, xs, ys, **kw):
        kw.setdefault("linewidth", 1.2)
        ax.step(xs, ys, where="post", label=label, **kw)
        drawn[panel].append(label)

    # CP plateaus (V) with the nominal levels of Table A.4.
    xs, hi = _steps(ticks, end_s, lambda r: r["cp_hi"] / 1000)
    _, lo = _steps(ticks, end_s, lambda r: r["cp_lo"] / 1000)
    series(ax_cp, "CP", "CP high", xs, hi, color="tab:blue")
    series(ax_cp, "CP", "CP low", xs, lo, color="tab:cyan")
    for v, name in ((12, "A"), (9, "B"), (6, "C"), (3, "D"), (0, "E"), (-12, "F")):
        ax_cp.axhline(v, color="0.85", linewidth=0.6, zorder=0)
        ax_cp.text(end_s, v, " " + name, va="center", fontsize=7, color="0.5")
    ax_cp.set_ylabel("CP (V)")
    ax_cp.set_ylim(-14, 14)

    # Duty (%) and the current it offers (A), the station's own figure, and the limit.
    _, duty = _steps(ticks, end_s, lambda r: r["duty"] / 10 if r["duty"] >= 0 else float("nan"))
    series(ax_pwm, "PWM", "duty %", xs, duty, color="tab:purple")
    ax_pwm.set_ylabel("duty (%)")
    ax_pwm.set_ylim(-5, 105)
    ax_a = ax_pwm.twinx()
    _, offer = _steps(ticks, end_s, lambda r: offered_ma(r["duty"]) / 1000 if r["duty"] >= 0
                      else 0)
    _, station = _steps(ticks, end_s, lambda r: r["offered_ma"] / 1000)
    series(ax_a, "PWM", "offered A (duty, as the EV reads it)", xs, offer, color="tab:green")
    series(ax_a, "PWM", "offered A (station)", xs, station, color="tab:olive", linestyle=":")
    if any(c.seq == "duty_within_limits" for c in checks):
        # The Annex A/B limit in force at each moment (max_current_ma, the cable).
        tl = annexa.Timeline(records)
        _, lim = _steps(ticks, end_s, lambda r: tl.current_limit_ma(r["t"]) / 1000)
        series(ax_a, "PWM", "limit A (installation, cable)", xs, lim, color="tab:red",
               linestyle="--", linewidth=0.9)
    ax_a.set_ylabel("offer (A)")
    ax_a.set_ylim(bottom=0)

    # State.
    states = [s for s in STATE_ORDER if any(r["state"] == s for r in ticks)]
    _, st = _steps(ticks, end_s, lambda r: states.index(r["state"]))
    series(ax_st, "State", "state", xs, st, color="black")
    ax_st.set_yticks(range(len(states)))
    ax_st.set_yticklabels(states, fontsize=8)
    ax_st.set_ylabel("state")

    # Contactor: coil command and mirror contact.
    _, coil = _steps(ticks, end_s, lambda r: r["contactor"] + 0.04)
    _, mirror = _steps(ticks, end_s, lambda r: r["mirror"] - 0.04)
    series(ax_k, "Contactor", "coil command", xs, coil, color="tab:orange")
    series(ax_k, "Contactor", "mirror contact", xs, mirror, color="tab:brown", linestyle="--")
    ax_k.set_yticks((0, 1))
    ax_k.set_yticklabels(("open", "closed"), fontsize=8)
    ax_k.set_ylim(-0.3, 1.3)

    # Phase currents.
    phases = start.get("phases", 3)
    for p in range(phases):
        _, cur = _steps(ticks, end_s, lambda r: r["current_ma"] / 1000)
        series(ax_i, "Current", "L%d" % (p + 1), xs, cur,
               linestyle=("-", "--", ":")[p], color=("tab:red", "tab:gray", "tab:blue")[p])
    ax_i.set_ylabel("current (A)")
    ax_i.set_xlabel("simulated time (s)")
    ax_i.set_ylim(bottom=0)

    # Faults: shaded while active, named where they start.
    spans = _fault_spans(ticks, end_s)
    for name, t0, t1 in spans:
        for ax in axes:
            ax.axvspan(t0, t1, color="tab:red", alpha=0.08, zorder=0)
        ax_cp.text(t0, 13, name, fontsize=7, color="tab:red", va="top")
    for panel in PANELS:
        if spans:
            drawn[panel].append("faults")

    # Annex A: a bar from each sequence's start over its limit, on the state panel.
    y = -0.6
    for c in checks:
        lim = _limit_ms(c.limit)
        if lim is None:
            continue
        color = "tab:green" if c.ok else "tab:red"
        ax_st.plot([c.at_ms / 1000, (c.at_ms + lim) / 1000], [y, y], color=color, linewidth=3,
                   solid_capstyle="butt")
        ax_st.text(c.at_ms / 1000, y - 0.15, c.seq, fontsize=6, color=color, va="top")
        drawn["State"].append("annexa:" + c.seq)
    ax_st.set_ylim(-1.6, len(states) - 0.5)

    # Scenario steps.
    for r in records:
        if r.get("k") in ("ev", "fault", "backend", "meter"):
            for ax in axes:
                ax.axvline(r["t"] / 1000, color="0.6", linewidth=0.5, linestyle=":")

    for ax in (ax_cp, ax_k, ax_i):
        ax.legend(loc="upper right", fontsize=7)
    ax_pwm.legend(loc="upper left", fontsize=7)
    ax_a.legend(loc="upper right", fontsize=7)
    for ax in axes:
        ax.grid(True, color="0.92")
        ax.set_xlim(0, end_s)
    fig.suptitle(title or "pilotsim: %s" % start.get("scenario", "trace"))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return drawn


def _fault_spans(ticks, end_s):
    """[(fault name, from s, to s)] while each fault was active."""
    out = []
    open_at = {}
    for r in ticks:
        now = set(r["faults"])
        for f in list(open_at):
            if f not in now:
                out.append((f, open_at.pop(f), r["t"] / 1000))
        for f in r["faults"]:
            if f not in open_at:
                open_at[f] = r["t"] / 1000
    for f, t0 in open_at.items():
        out.append((f, t0, end_s))
    return out


def png_size(path):
    """(width, height) from a PNG file's IHDR."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError("%s is not a PNG" % path)
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
