//! Where frames go out and come in: an AF_XDP port (fwd-afxdp's [`Port`], with our XDP program
//! capturing every IP frame for the sink) or an AF_PACKET socket when AF_XDP is unavailable.
//!
//! One [`Endpoint`] per thread, for one queue of one interface; the [`Capture`] (the XDP program
//! attached to an interface a sink listens on) lives on the main thread until every endpoint is
//! gone.

use fwd_afxdp::Capture as CaptureMode;
use fwd_afxdp::{
    AttachMode, AttachedMode, BindMode, PacketConfig, PacketSocket, Port, PortConfig, XdpProgram,
};
use std::fmt;

/// Which kernel interface to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IoKind {
    /// AF_XDP, falling back to AF_PACKET if AF_XDP cannot be set up.
    Auto,
    Xdp,
    Packet,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpModeArg {
    Auto,
    Native,
    Generic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BindArg {
    Auto,
    Copy,
    ZeroCopy,
}

/// How endpoints are opened.
#[derive(Clone, Copy, Debug)]
pub struct IoConfig {
    pub kind: IoKind,
    pub xdp_mode: XdpModeArg,
    pub bind: BindArg,
    pub frames: u32,
    pub need_wakeup: bool,
    /// The receive side's XDP program counts and drops what arrives (see `--count-only`).
    pub count_only: bool,
}

/// The XDP program that steers an interface's IP frames to the sink's sockets.
#[derive(Debug)]
pub struct Capture {
    pub program: XdpProgram,
    pub mode: AttachedMode,
}

/// One thread's way in and out.
#[derive(Debug)]
pub enum Endpoint {
    Xdp(Box<Port>),
    Packet { tx: Option<PacketSocket>, rx: Option<PacketSocket> },
}

impl Endpoint {
    #[inline]
    pub fn transmit<F: FnMut(usize, &mut [u8]) -> usize>(&mut self, max: usize, write: F) -> usize {
        match self {
            Endpoint::Xdp(port) => port.transmit(max, write),
            Endpoint::Packet { tx: Some(tx), .. } => tx.transmit(max, write),
            Endpoint::Packet { tx: None, .. } => 0,
        }
    }

    #[inline]
    pub fn receive_each<F: FnMut(&[u8])>(&mut self, max: usize, inspect: F) -> usize {
        match self {
            Endpoint::Xdp(port) => port.receive_each(max, inspect),
            Endpoint::Packet { rx: Some(rx), .. } => rx.receive_each(max, inspect),
            Endpoint::Packet { rx: None, .. } => 0,
        }
    }

    /// Generated frames still owned by the kernel (AF_XDP: not yet completed).
    pub fn tx_outstanding(&self) -> usize {
        match self {
            Endpoint::Xdp(port) => port.tx_frames() as usize - port.tx_free_frames(),
            Endpoint::Packet { .. } => 0,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Endpoint::Xdp(port) => {
                format!("AF_XDP {} queue {} ({})", port.ifname(), port.queue(), port.bound_mode())
            }
            Endpoint::Packet { tx, rx } => {
                let name = tx.as_ref().or(rx.as_ref()).map(|s| s.ifname().to_string()).unwrap_or_default();
                format!("AF_PACKET {name}")
            }
        }
    }

    /// Counters worth a line in the report.
    pub fn stats_json(&self) -> serde_json::Value {
        match self {
            Endpoint::Xdp(port) => {
                let s = port.stats();
                serde_json::json!({
                    "kind": "af_xdp", "interface": port.ifname(), "queue": port.queue(),
                    "bind": port.bound_mode().name(), "tx_frames": s.tx_frames, "rx_frames": s.rx_frames,
                    "tx_kicks": s.tx_kicks, "tx_kick_errors": s.tx_kick_errors, "lost_frames": s.lost_frames,
                    "kernel": port.kernel_stats().ok().map(|k| serde_json::json!({
                        "rx_dropped": k.rx_dropped, "rx_ring_full": k.rx_ring_full,
                        "rx_fill_ring_empty": k.rx_fill_ring_empty_descs, "tx_invalid_descs": k.tx_invalid_descs,
                    })),
                })
            }
            Endpoint::Packet { tx, rx } => {
                let t = tx.as_ref().map(|s| s.stats()).unwrap_or_default();
                let r = rx.as_ref().map(|s| s.stats()).unwrap_or_default();
                serde_json::json!({
                    "kind": "af_packet", "tx_frames": t.tx_frames, "tx_busy": t.tx_busy, "tx_errors": t.tx_errors,
                    "rx_frames": r.rx_frames, "rx_truncated": r.rx_truncated, "rx_errors": r.rx_errors,
                    "rx_kernel_drops": rx.as_ref().and_then(|s| s.kernel_drops().ok()),
                })
            }
        }
    }
}

/// Which way an endpoint carries traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Directions {
    pub send: bool,
    pub receive: bool,
}

#[derive(Debug)]
pub struct Opened {
    pub endpoints: Vec<Endpoint>,
    pub capture: Option<Capture>,
    /// What was used, for the report ("af_xdp" / "af_packet") and why a fallback happened.
    pub kind: &'static str,
    pub fallback: Option<String>,
}

impl fmt::Display for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.endpoints.iter().map(|e| e.describe()).collect();
        write!(f, "{}", list.join(", "))?;
        if let Some(c) = &self.capture {
            write!(f, " (XDP capture in {} mode)", c.mode)?;
        }
        Ok(())
    }
}

/// Opens one endpoint per queue of `ifname`.
pub fn open(
    ifname: &str,
    queues: &[u32],
    directions: Directions,
    config: &IoConfig,
) -> anyhow::Result<Opened> {
    match config.kind {
        IoKind::Xdp => open_xdp(ifname, queues, directions, config),
        IoKind::Packet if config.count_only && directions.receive => {
            anyhow::bail!("--count-only counts in fwd's XDP program: it needs AF_XDP, not --io packet")
        }
        IoKind::Packet => open_packet(ifname, queues, directions),
        IoKind::Auto => match open_xdp(ifname, queues, directions, config) {
            Ok(opened) => Ok(opened),
            Err(e) if config.count_only && directions.receive => {
                Err(e.context(format!("--count-only needs AF_XDP on {ifname}")))
            }
            Err(e) => {
                let reason = format!("{e:#}");
                eprintln!("fwd-pktgen: AF_XDP unavailable on {ifname} ({reason}); using AF_PACKET");
                let mut opened = open_packet(ifname, queues, directions)?;
                opened.fallback = Some(reason);
                Ok(opened)
            }
        },
    }
}

fn open_xdp(
    ifname: &str,
    queues: &[u32],
    directions: Directions,
    config: &IoConfig,
) -> anyhow::Result<Opened> {
    let capture = if directions.receive {
        let mut program = XdpProgram::load()?;
        let mode = match config.xdp_mode {
            XdpModeArg::Auto => AttachMode::Auto,
            XdpModeArg::Native => AttachMode::Native,
            XdpModeArg::Generic => AttachMode::Generic,
        };
        let attached = program.attach(ifname, mode)?.mode;
        program.set_capture(if config.count_only {
            CaptureMode::AllCountAndDrop
        } else {
            CaptureMode::AllToSockets
        })?;
        Some(Capture { program, mode: attached })
    } else {
        None
    };
    let tx_frames = match (directions.send, directions.receive) {
        (true, true) => config.frames / 2,
        (true, false) => config.frames,
        (false, _) => 0,
    };
    let port_config = PortConfig {
        frame_count: config.frames,
        frame_size: 2048,
        bind_mode: match config.bind {
            BindArg::Auto => BindMode::Auto,
            BindArg::Copy => BindMode::Copy,
            BindArg::ZeroCopy => BindMode::ZeroCopy,
        },
        need_wakeup: config.need_wakeup,
        tx_frames,
    };
    let mut endpoints = Vec::new();
    for &queue in queues {
        let port = Port::open(ifname, queue, &port_config)?;
        if let Some(c) = &capture {
            c.program.register_port(&port)?;
        }
        endpoints.push(Endpoint::Xdp(Box::new(port)));
    }
    Ok(Opened { endpoints, capture, kind: "af_xdp", fallback: None })
}

fn open_packet(ifname: &str, queues: &[u32], directions: Directions) -> anyhow::Result<Opened> {
    // AF_PACKET has no queues: one socket pair per sending thread, one receiving socket per
    // interface (a second one would see every frame again).
    let mut endpoints = Vec::new();
    for (i, _) in queues.iter().enumerate() {
        let tx = if directions.send {
            Some(PacketSocket::open(ifname, &PacketConfig { receive: false, ..PacketConfig::default() })?)
        } else {
            None
        };
        let rx = if directions.receive && i == 0 {
            Some(PacketSocket::open(ifname, &PacketConfig { receive: true, ..PacketConfig::default() })?)
        } else {
            None
        };
        if tx.is_some() || rx.is_some() {
            endpoints.push(Endpoint::Packet { tx, rx });
        }
    }
    Ok(Opened { endpoints, capture: None, kind: "af_packet", fallback: None })
}
