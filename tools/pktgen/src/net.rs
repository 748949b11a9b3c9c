//! MAC addresses: the interface's own, and the next hop's from the kernel's neighbour table.
//!
//! Start-up only; asks `ip -j` (iproute2) rather than speaking netlink, which keeps this crate
//! free of unsafe code. A next hop not in the table yet is solicited with one ping, then looked
//! up again.

use crate::spec::{parse_mac, Mac};
use anyhow::{bail, Context, Result};
use std::net::IpAddr;
use std::process::Command;

/// The interface's own MAC address.
pub fn interface_mac(ifname: &str) -> Result<Mac> {
    let path = format!("/sys/class/net/{ifname}/address");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("interface {ifname} not found (reading {path}) in this network namespace")
    })?;
    parse_mac(text.trim()).map_err(|e| anyhow::anyhow!("{path}: {e}"))
}

fn ip_json(args: &[&str]) -> Result<serde_json::Value> {
    let output = Command::new("ip").arg("-j").args(args).output().context("running `ip` (iproute2)")?;
    if !output.status.success() {
        bail!("`ip -j {}` failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    if output.stdout.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(serde_json::Value::Array(vec![]));
    }
    serde_json::from_slice(&output.stdout).with_context(|| format!("parsing `ip -j {}`", args.join(" ")))
}

/// The next hop towards `destination` out of `ifname`: the route's gateway, or the destination
/// itself when it is on-link.
fn next_hop(destination: IpAddr, ifname: &str) -> Result<IpAddr> {
    let text = destination.to_string();
    let routes = ip_json(&["route", "get", &text, "oif", ifname])?;
    let route = routes.get(0).with_context(|| format!("no route to {destination} out of {ifname}"))?;
    match route.get("gateway").and_then(|g| g.as_str()) {
        Some(gateway) => {
            gateway.parse().with_context(|| format!("gateway {gateway:?} of the route to {destination}"))
        }
        None => Ok(destination),
    }
}

fn neighbour_mac(hop: IpAddr, ifname: &str) -> Result<Option<Mac>> {
    let family = if hop.is_ipv4() { "-4" } else { "-6" };
    let text = hop.to_string();
    let entries = ip_json(&[family, "neigh", "show", "to", &text, "dev", ifname])?;
    let entry = entries.as_array().and_then(|list| {
        list.iter().find(|e| {
            let failed = e
                .get("state")
                .and_then(|s| s.as_array())
                .is_some_and(|s| s.iter().any(|v| v == "FAILED" || v == "INCOMPLETE"));
            e.get("lladdr").is_some() && !failed
        })
    });
    entry
        .and_then(|e| e.get("lladdr")?.as_str().map(str::to_string))
        .map(|mac| parse_mac(&mac).map_err(|e| anyhow::anyhow!("neighbour {hop}: {e}")))
        .transpose()
}

/// The MAC address frames to `destination` are sent to, out of `ifname`.
pub fn resolve_dst_mac(destination: IpAddr, ifname: &str) -> Result<Mac> {
    let hop = next_hop(destination, ifname)?;
    if let Some(mac) = neighbour_mac(hop, ifname)? {
        return Ok(mac);
    }
    let family = if hop.is_ipv4() { "-4" } else { "-6" };
    let _ =
        Command::new("ping").args([family, "-c", "1", "-W", "1", "-I", ifname, &hop.to_string()]).output();
    match neighbour_mac(hop, ifname)? {
        Some(mac) => Ok(mac),
        None => bail!(
            "no neighbour entry for {hop} (next hop to {destination}) on {ifname}, even after a ping: \
             give the MAC with --dst-mac"
        ),
    }
}
