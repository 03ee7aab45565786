#!/bin/sh
# Install the EdgeFleet agent on a gateway: one release beside the others, the `current`
# link switched to it in one rename, the systemd unit, a system user. POSIX sh; run as
# root. Running it again with the same release changes nothing.
#
#   install.sh [--version V] [--no-start] AGENT      install AGENT (the edge-agent binary)
#   install.sh --uninstall [--purge]                 remove it; --purge also the config,
#                                                    keys and outbox
#
# Layout (under $DESTDIR, if set: then files are laid out only; no user, no group, no
# owner, no systemctl):
#   /opt/edgefleet/releases/<version>/edge-agent   each release, kept for a revert
#   /opt/edgefleet/current -> releases/<version>    switched by rename, never missing
#   /usr/local/bin/edge-agent -> /opt/edgefleet/current/edge-agent
#   /etc/edgefleet/                                config and keys (root:edgefleet 0750)
#   /var/lib/edgefleet/                            outbox and state (edgefleet 0750)
#   /etc/systemd/system/edge-agent.service
# The version is AGENT's own (`AGENT --version`) unless --version says it (a release
# built for another architecture cannot run here).
set -eu

ROOT=${DESTDIR:-}
OPT=$ROOT/opt/edgefleet
HERE=$(cd "$(dirname "$0")" && pwd)
UNIT_SRC=$HERE/edge-agent.service
USER_NAME=edgefleet

say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

real_install() { [ -z "$ROOT" ]; }

# systemd runs this machine (not merely installed: a container, a chroot)
systemd_runs() { real_install && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

# copy $1 to $2 with mode $3, unless $2 is that already (then nothing is touched)
put() {
    if [ -f "$2" ] && cmp -s "$1" "$2"; then
        chmod "$3" "$2"
        return 0
    fi
    cp "$1" "$2.new.$$"
    chmod "$3" "$2.new.$$"
    mv -f "$2.new.$$" "$2"
    say "wrote $2"
}

# point link $1 at $2, by a rename over it: at no moment is there no $1
link() {
    if [ -L "$1" ] && [ "$(readlink "$1")" = "$2" ]; then
        return 0
    fi
    [ -e "$1" ] && [ ! -L "$1" ] && die "$1 is there and is not a link: not replacing it"
    ln -s "$2" "$1.new.$$"
    mv -T -f "$1.new.$$" "$1" || { rm -f "$1.new.$$"; die "cannot rename over $1 (mv -T)"; }
    say "$1 -> $2"
}

folder() {  # folder $1 with mode $2, owned $3 on a real install
    mkdir -p "$1"
    chmod "$2" "$1"
    if real_install; then chown "$3" "$1"; fi
}

make_user() {
    real_install || return 0
    if ! id "$USER_NAME" >/dev/null 2>&1; then
        if command -v useradd >/dev/null 2>&1; then
            useradd --system --home-dir /var/lib/edgefleet --no-create-home \
                --shell /usr/sbin/nologin --user-group "$USER_NAME"
        else
            addgroup -S "$USER_NAME" && adduser -S -D -H -h /var/lib/edgefleet \
                -s /sbin/nologin -G "$USER_NAME" "$USER_NAME"
        fi
        say "made the system user $USER_NAME"
    fi
    if getent group dialout >/dev/null 2>&1 && ! id -nG "$USER_NAME" | grep -qw dialout; then
        if command -v usermod >/dev/null 2>&1; then
            usermod -a -G dialout "$USER_NAME"
        else
            addgroup "$USER_NAME" dialout
        fi
        say "$USER_NAME may open serial ports (dialout)"
    fi
}

install_agent() {
    agent=$1 version=$2 start=$3
    [ -f "$agent" ] || die "$agent: no such file"
    if [ -z "$version" ]; then
        version=$("$agent" --version 2>/dev/null | awk 'NR == 1 {print $2}') || true
        [ -n "$version" ] ||
            die "$agent --version said nothing: give --version V (a build for another machine?)"
    fi
    case $version in
        ''|*/*|.*|*[!A-Za-z0-9._+-]*) die "version '$version' is not a release name" ;;
    esac
    [ -f "$UNIT_SRC" ] || die "$UNIT_SRC: the unit is shipped beside this script"
    make_user
    folder "$OPT" 0755 root:root
    folder "$OPT/releases" 0755 root:root
    folder "$OPT/releases/$version" 0755 root:root
    put "$agent" "$OPT/releases/$version/edge-agent" 0755
    link "$OPT/current" "releases/$version"
    mkdir -p "$ROOT/usr/local/bin"
    link "$ROOT/usr/local/bin/edge-agent" /opt/edgefleet/current/edge-agent
    folder "$ROOT/etc/edgefleet" 0750 "root:$USER_NAME"
    folder "$ROOT/var/lib/edgefleet" 0750 "$USER_NAME:$USER_NAME"
    mkdir -p "$ROOT/etc/systemd/system"
    put "$UNIT_SRC" "$ROOT/etc/systemd/system/edge-agent.service" 0644
    say "release $version is current; releases kept: $(ls "$OPT/releases" | tr '\n' ' ')"
    if systemd_runs; then
        systemctl daemon-reload
        if [ "$start" = yes ] && [ -f /etc/edgefleet/agent.yaml ]; then
            systemctl enable edge-agent >/dev/null 2>&1 || true
            systemctl restart edge-agent
            say "edge-agent (re)started"
        else
            say "next: edge-agent enroll, then systemctl enable --now edge-agent"
        fi
    fi
}

uninstall() {
    purge=$1
    if systemd_runs; then
        systemctl disable --now edge-agent >/dev/null 2>&1 || true
    fi
    rm -f "$ROOT/etc/systemd/system/edge-agent.service"
    if [ -L "$ROOT/usr/local/bin/edge-agent" ]; then rm -f "$ROOT/usr/local/bin/edge-agent"; fi
    rm -rf "$OPT"
    if [ "$purge" = yes ]; then
        rm -rf "$ROOT/etc/edgefleet" "$ROOT/var/lib/edgefleet"
        say "removed the agent, its config, keys and outbox"
    else
        say "removed the agent; kept /etc/edgefleet and /var/lib/edgefleet (--purge removes them)"
    fi
}

version='' start=yes action=install purge=no agent=''
while [ $# -gt 0 ]; do
    case $1 in
        --version) [ $# -ge 2 ] || die "--version needs a value"; version=$2; shift ;;
        --no-start) start=no ;;
        --uninstall) action=uninstall ;;
        --purge) purge=yes ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        -*) die "unknown option $1" ;;
        *) [ -z "$agent" ] || die "one agent at a time"; agent=$1 ;;
    esac
    shift
done
if real_install && [ "$(id -u)" -ne 0 ]; then
    die "run as root (or set DESTDIR to lay the files out in a folder)"
fi
if [ "$action" = uninstall ]; then
    uninstall "$purge"
else
    [ -n "$agent" ] || die "usage: install.sh [--version V] [--no-start] AGENT | --uninstall [--purge]"
    install_agent "$agent" "$version" "$start"
fi
