# bench/common.sh — helpers shared by the proxy benchmarks (sourced, not run). Expects the caller's
# `log` function and `PIDS` array (processes stopped on exit).

# poll_when_idle: on a virtual machine an idle vCPU halts, and waking it for the next message costs
# an exit to the hypervisor and a reschedule there. A proxy whose core waits between messages pays
# that on every hop, so without this the figures measure the host's idle-exit latency more than the
# software (pgbouncer went from 3,506 to 11,942 TPS and agentgate from 2,533 to 10,432 with it).
# Holding /dev/cpu_dma_latency at 0 makes idle CPUs poll instead, for every target alike (tuned's
# latency-performance profile does the same). Sets IDLE to what the report says; BENCH_NO_IDLE=0
# leaves cpuidle alone.
poll_when_idle() {
    IDLE="CPUs halt when idle"
    [ "${BENCH_NO_IDLE:-1}" = 1 ] || return 0
    if [ -w /dev/cpu_dma_latency ]; then
        python3 -c 'import os, signal; fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY); os.write(fd, bytes(4)); signal.pause()' &
        PIDS+=("$!")
        IDLE="idle CPUs poll (/dev/cpu_dma_latency held at 0)"
    else
        log "warning: /dev/cpu_dma_latency is not writable (needs root): idle CPUs may halt between messages"
    fi
}
