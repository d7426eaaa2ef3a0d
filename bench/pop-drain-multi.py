#!/usr/bin/env python3
"""pop-drain.py spread over several POP3 ports: retrieve every message of users
u0..u{N-1}@DOMAIN (password pw{i}) with PAR parallel sessions, user i on port
PORTS[i mod K], so a K-node cluster serves from every node; print '<messages> <seconds>'.
usage: pop-drain-multi.py PORT[,PORT...] USERS PAR DOMAIN"""
import concurrent.futures as cf, poplib, sys, time

ports = [int(p) for p in sys.argv[1].split(",")]
users, par, dom = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]


def one(i):
    p = poplib.POP3("127.0.0.1", ports[i % len(ports)], timeout=60)
    p.user(f"u{i}@{dom}")
    p.pass_(f"pw{i}")
    n, _ = p.stat()
    for k in range(1, n + 1):
        p.retr(k)
    p.quit()
    return n


t = time.time()
with cf.ThreadPoolExecutor(par) as ex:
    total = sum(ex.map(one, range(users)))
print(total, time.time() - t)
