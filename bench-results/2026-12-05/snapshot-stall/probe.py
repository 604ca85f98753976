# fdatasync latency probe: every 20 ms append 4 KiB to a file in DIR and
# fdatasync it; print "unix_time_s latency_ms" per sync for SECS seconds.
import os, sys, time
d, secs = sys.argv[1], float(sys.argv[2])
path = os.path.join(d, "fsync-probe.bin")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
buf = b"x" * 4096
end = time.time() + secs
while time.time() < end:
    os.write(fd, buf)
    t0 = time.perf_counter()
    os.fdatasync(fd)
    dt = (time.perf_counter() - t0) * 1000
    print(f"{time.time():.3f} {dt:.2f}", flush=True)
    time.sleep(0.02)
os.close(fd); os.unlink(path)
