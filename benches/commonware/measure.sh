#!/bin/bash
# measure.sh <cmd...>: runs cmd (timeout 180 s); afterwards prints how much CPU
# *other* processes used during the run (machine busy% minus this command's CPU),
# to flag rounds contaminated by the other engineer's work.
stat() { read -r _ u n s i w x y z _ < /proc/stat; echo $((u+n+s+i+w+x+y+z)) $((i+w)); }
read -r t1 i1 < <(stat)
/usr/bin/time -f "cmd-cpu-seconds %U %S" -o /tmp/cw-bench-time.txt timeout 180 "$@" 2>&1
rc=$?
read -r t2 i2 < <(stat)
read -r _ us sy < /tmp/cw-bench-time.txt
awk -v t=$((t2-t1)) -v i=$((i2-i1)) -v us="$us" -v sy="$sy" -v rc=$rc 'BEGIN{
  busy=(t-i)/100.0; wall=t/100.0/2; own=us+sy; other=busy-own; if(other<0)other=0;
  printf "exit=%d wall~%.1fs machine-busy=%.1f cpu-s own=%.1f cpu-s other=%.1f cpu-s (other avg %.0f%% of one core)\n", rc, wall, busy, own, other, (wall>0?100*other/wall:0) }'
exit $rc
