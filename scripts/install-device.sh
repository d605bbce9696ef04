#!/usr/bin/env bash
# Install the device PC: the controller and the clinician's console as two services.
#
#   sudo make install-device                  # or: sudo bash scripts/install-device.sh
#
# Into DESTDIR (default /): DESTDIR=/tmp/root installs the same files under /tmp/root (a package
# build, the test suite) and creates no user, changes no owner and starts nothing there.
# MYHAND_VENV=0 leaves out the virtual environment (the test: no download). What a person must
# decide is left to them and printed at the end: the orthosis's USB ids, the armband's stream name,
# the clinicians' accounts. Nothing that exists is overwritten: an edited configuration stays, the
# shipped one is put beside it as FILE.new. docs/controller.md "Install as a service" explains
# each step.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
DESTDIR="${DESTDIR:-/}"
root="${DESTDIR%/}"
PREFIX=/opt/myhand
PY="${PYTHON:-python3}"
TORCH_VERSION="${METAEMG_TORCH_VERSION:-2.13.0}"
# the CPU-only wheels: from the public index, this exact pin pulls the CUDA build (GBs)
TORCH_INDEX="${METAEMG_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
as_root=0
[[ -z "$root" && $(id -u) == 0 ]] && as_root=1
if [[ -z "$root" && $as_root == 0 ]]; then
    echo "error: installing into / needs root: sudo make install-device (or DESTDIR=DIR to stage it elsewhere)" >&2
    exit 2
fi
say() { echo "install-device: $*"; }

# 1. the software: a virtual environment with the device's packages and the calibration's torch (CPU)
if [[ "${MYHAND_VENV:-1}" != 0 ]]; then
    if ! "$PY" -c 'import ensurepip, venv' 2>/dev/null; then
        echo "error: $PY cannot create a virtual environment: apt-get install python3-venv" >&2
        exit 2
    fi
    say "virtual environment $root$PREFIX/venv (torch==$TORCH_VERSION from $TORCH_INDEX, no CUDA) ..."
    [[ -x "$root$PREFIX/venv/bin/python" ]] || "$PY" -m venv "$root$PREFIX/venv"
    "$root$PREFIX/venv/bin/python" -m pip install --quiet --upgrade pip
    "$root$PREFIX/venv/bin/python" -m pip install --quiet "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX"
    "$root$PREFIX/venv/bin/python" -m pip install --quiet "$here[device,calibration]"
fi
install -d -m 0755 "$root$PREFIX/docs" "$root/usr/local/bin" "$root/usr/share/applications"
install -m 0644 "$here/docs/clinician.md" "$here/docs/controller.md" "$here/docs/calibration.md" "$root$PREFIX/docs/"
ln -sfn "$PREFIX/venv/bin/metaemg-console" "$root/usr/local/bin/myhand-console"  # myhand-console url
# "MyHand console" in the desktop's applications menu: opens the running console's page
install -m 0644 "$here/systemd/myhand-console.desktop" "$root/usr/share/applications/"

# 2. the configuration, readable by the service's group only
place() {  # place SRC DEST MODE: install unless DEST exists (then DEST.new beside it)
    local dest="$2"
    if [[ -e "$dest" ]] && ! cmp -s "$1" "$dest"; then
        dest="$dest.new"
        say "kept your $2; the shipped one is $dest"
    fi
    install -m "$3" "$1" "$dest"
}
install -d -m 0750 "$root/etc/myhand"
place "$here/configs/controller.yaml" "$root/etc/myhand/controller.yaml" 0640
calibration="$(mktemp)"
trap 'rm -f "$calibration"' EXIT
cat > "$calibration" <<'YAML'
# metaemg-calibrate's configuration on the device PC (docs/calibration.md, "Configuration"): the
# console's calibrations use it. Every other key has its documented default.
state_dir: /var/lib/myhand
daemon:
  control: ipc:///run/myhand/control.sock
  config: /etc/myhand/controller.yaml
YAML
place "$calibration" "$root/etc/myhand/calibration.yaml" 0640

# 3. the patients' state (clips, models, reports, the open session): the service's, group-readable
install -d -m 0750 "$root/var/lib/myhand"

# 4. a stable name for the orthosis, and the two services
install -d -m 0755 "$root/etc/udev/rules.d" "$root/etc/systemd/system"
place "$here/systemd/99-myhand.rules" "$root/etc/udev/rules.d/99-myhand.rules" 0644
install -m 0644 "$here/systemd/myhand-controller.service" "$here/systemd/myhand-console.service" \
    "$root/etc/systemd/system/"

if [[ $as_root == 1 ]]; then
    getent group myhand >/dev/null || groupadd --system myhand
    id myhand >/dev/null 2>&1 || useradd --system --gid myhand --groups dialout --home-dir /var/lib/myhand \
        --shell /usr/sbin/nologin myhand
    chown root:myhand /etc/myhand /etc/myhand/*.yaml*
    chown myhand:myhand /var/lib/myhand
    udevadm control --reload && udevadm trigger --subsystem-match=tty || true
    systemctl daemon-reload
    "$PREFIX/venv/bin/myhand-controller" --config /etc/myhand/controller.yaml --print-config >/dev/null
    systemd-analyze verify /etc/systemd/system/myhand-controller.service /etc/systemd/system/myhand-console.service
else
    say "staged under $root: as root, the install would also create group and user myhand (in dialout), give"
    say "/etc/myhand to root:myhand and /var/lib/myhand to myhand:myhand, and reload udev and systemd"
fi
cat <<EOF
install-device: done. What is yours to decide, then start:
  1. the orthosis's USB ids in /etc/udev/rules.d/99-myhand.rules (see the file), then
     udevadm control --reload && udevadm trigger --subsystem-match=tty; ls -l /dev/myhand
  2. the armband's stream name (lsl.name) in /etc/myhand/controller.yaml, if not MyHand-EMG
  3. each clinician's account in group myhand: usermod -aG myhand NAME (then log in again)
  4. systemctl enable --now --no-block myhand-controller myhand-console
     (--no-block: the controller reports ready only once armband, orthosis and model are up)
  5. a clinician opens "MyHand console" from the applications menu (or: myhand-console url);
     their guide is $PREFIX/docs/clinician.md
EOF
