# Medians and runs per build of the files scripts/ab.sh wrote, as a Markdown table.
# OUT (default /tmp/ab), VARIANTS (default "A B"), NAMES (column titles, default VARIANTS).
import re,glob,os,sys,statistics as st
OUT=os.environ.get('OUT','/tmp/ab')
VS=os.environ.get('VARIANTS','A B').split()
NAMES=dict(zip(VS,os.environ.get('NAMES',' '.join(VS)).split()))
def rows(f):
    out={}
    for l in open(f):
        p=l.split()
        if len(p)<10 or p[0] in('scenario','shoal'): continue
        name=p[0] if p[1] in('io_uring','epoll') else p[0]+' '+p[1]
        i=1 if p[1] in('io_uring','epoll') else 2
        be=p[i]; size=p[i+2]; rest=' '.join(p[i+9:])
        out[(name,be,size)]=(p,l,float(p[i+3]))
    return out
def get(kind,pat,key):
    vals={}
    for v in VS:
        vals[v]=[]
        for f in sorted(glob.glob(f'{OUT}/{kind}-{v}-*.txt')):
            r=rows(f)
            if key not in r: continue
            m=re.search(pat,r[key][1])
            if m: vals[v].append(float(m.group(1)))
            elif pat == r'NOMATCH': vals[v].append(r[key][2])
    return vals
spec=[
 ('throughput 64 KiB × raw sealed TCP stream','all',r'([\d.]+)x raw sealed TCP',('throughput',None,'65536')),
 ('throughput 1 KiB × raw seal','t1k',r'([\d.]+)x raw seal',('throughput',None,'1024')),
 ('throughput 1 KiB × raw sealed TCP stream','t1k',r'([\d.]+)x raw sealed TCP',('throughput',None,'1024')),
 ('throughput 64 B msg/s × raw seal','t64',r'([\d.]+)x raw seal',('throughput',None,'64')),
 ('throughput 64 B msg/s (M)','t64',r'NOMATCH',('throughput',None,'64')),
 ('request p50 × raw ping-pong p50','all',r'([\d.]+)x raw TCP p50',('request',None,'64')),
 ('latency p50 × raw ping-pong p50','all',r'([\d.]+)x raw TCP p50',('latency',None,'64')),
 ('send 5 B µs/op delivered','all',r'enq, ([\d.]+) delivered',('send',None,'5')),
 ('idle KiB RSS per connection (5 fresh processes)','idle',r'([\d.]+) KiB RSS',('idle',None,'0')),
]
print('| metric | backend | ' + ' | '.join(f'{NAMES[v]}' for v in VS) + ' | ' + ' | '.join(f'{NAMES[v]} runs' for v in VS) + ' |')
print('|---|---|' + '---|'*(2*len(VS)))
for label,kind,pat,(n,_,size) in spec:
    for be in ('io_uring','epoll'):
        v=get(kind,pat,(n,be,size))
        if label.endswith('(M)'):
            v={k:[x/1e6 for x in l] for k,l in v.items()}
        if any(not v[x] for x in VS): continue
        fmt=lambda l:' / '.join(f'{x:.2f}' for x in l)
        print(f"| {label} | {be} | " + ' | '.join(f'{st.median(v[x]):.2f}' for x in VS) + ' | ' + ' | '.join(fmt(v[x]) for x in VS) + ' |')
