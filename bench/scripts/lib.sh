# Shared by the bench scripts: `source "$(dirname "$0")/lib.sh"`.

# secs: a monotonic clock reading, in seconds.
secs() { python3 -c "import time; print(time.monotonic())"; }

# gen_large DIR COUNT SIZE_MIB: DIR/big-1.bin .. big-COUNT.bin of SIZE_MIB
# MiB of seeded pseudo-random bytes each (kept when already the right size).
gen_large() {
  local dir=$1 count=$2 size_mib=$3 i f
  mkdir -p "$dir"
  for i in $(seq 1 "$count"); do
    f="$dir/big-$i.bin"
    [ "$(stat -c %s "$f" 2>/dev/null || echo 0)" = $((size_mib << 20)) ] && continue
    python3 - "$f" "$size_mib" "$i" <<'PY'
import random, sys
r = random.Random(int(sys.argv[3]))
with open(sys.argv[1], 'wb') as f:
    for _ in range(int(sys.argv[2])):
        f.write(r.randbytes(1 << 20))
PY
  done
}
