# Sourced by the bench scripts: the safety net their EXIT trap runs, whatever killed Python.
# Unmounts everything below the work directory (deepest first; FUSE mounts lazily), stops
# every process the Python side recorded in WORK/pids (registry, containerd, fsnap daemons),
# then deletes the work directory.
bench_cleanup() {
  local work=$1 point pid
  [ -d "$work" ] || return 0
  while read -r point; do
    fusermount3 -uz "$point" 2>/dev/null || umount -l "$point" 2>/dev/null || true
  done < <(awk -v p="$work/" 'index($2, p) == 1 { print $2 }' /proc/self/mounts | sort -r)
  if [ -f "$work/pids" ]; then
    while read -r pid; do
      kill "$pid" 2>/dev/null || true
    done < "$work/pids"
    sleep 0.5
    while read -r pid; do
      kill -9 "$pid" 2>/dev/null || true
    done < "$work/pids"
  fi
  rm -rf --one-file-system "$work"
}
