"""Event-level model of dW's K = 64 split-batch ring (gsl_dw_sm90 with split_b and kDbC): the loader's
128 threads issue each step's copies into slot step % stages once the slot's `empty` barrier allows, the
copies land in random order and complete the slot's `full` barrier (129 arrivals, the TMA's bytes), and two
computing warpgroups wait on `full` with the parity of their step, release their previous stage once the
next one is full, and check that the slot holds the step they expect.

    python bench/dw_splitb_model.py new   # chunks by the parity of the step's index in the CTA (the kernel)
    python bench/dw_splitb_model.py old   # chunks bc = cw, cw + 2, .. in every group (before session 24)

Each line: chunks per group (nbc), ring size, groups per CTA, and the outcomes over 150 random
schedules. "old" reads stale slots where nbc is odd and a CTA has several groups; "new" never does."""
import random, sys
class MBar:
    def __init__(s, count): s.count=count; s.pending=count; s.phase=0; s.tx=0
    def arrive(s, n=1, tx=0):
        s.tx += tx; s.pending -= n
        assert s.pending >= 0, "over-arrival"
        s.check()
    def complete_tx(s, b): s.tx -= b; assert s.tx >= 0; s.check()
    def check(s):
        if s.pending == 0 and s.tx == 0: s.phase += 1; s.pending = s.count
    def try_wait(s, parity): return (s.phase & 1) != parity  # phase with `parity` completed
def run(nbc, stages, ngroups, seed):
    rnd = random.Random(seed)
    full = [MBar(129) for _ in range(stages)]; empty = [MBar(4) for _ in range(stages)]
    # which step was in each slot when consumed, to check data correctness
    slot_step = [None]*stages
    inflight = []  # (slot, kind, step)
    # loader state per thread collapsed to: 128 threads + tid0 TMA; model threads individually
    T = 128
    lpos = [[0,0] for _ in range(T)]  # ring pos per loader thread
    lstep = [0]*T; total = ngroups*nbc
    cw = []
    for c in range(2):
        cw.append(dict(step=c, pos=[c % stages, (c//stages)&1], prev=None, held=[], done=False, g=0, bcs=[]))
    it = 0
    while True:
        it += 1
        if it > 10**6: return "livelock?"
        acts = []
        for t in range(T):
            if lstep[t] < total:
                s, ph = lpos[t]
                if empty[s].try_wait(ph ^ 1): acts.append(('L', t))
        for c in range(2):
            w = cw[c]
            if w['step'] < total:
                s, ph = w['pos']
                if full[s].try_wait(ph): acts.append(('C', c))
            elif not w['done']: acts.append(('F', c))
        if inflight: acts.append(('LAND', None))
        if not acts:
            if all(l >= total for l in lstep) and all(w['done'] for w in cw): return "ok"
            return "DEADLOCK lstep=%s cw=%s" % (sorted(set(lstep)), [(w['step'], w['pos']) for w in cw])
        a, x = rnd.choice(acts)
        if a == 'L':
            t = x; s, ph = lpos[t]; k = lstep[t]
            if t == 0:
                full[s].arrive(1, 8192); inflight.append((s, 'tma', k))
            inflight.append((s, 'cp', k))
            lstep[t] += 1; lpos[t][0] += 1
            if lpos[t][0] == stages: lpos[t][0] = 0; lpos[t][1] ^= 1
        elif a == 'LAND':
            i = rnd.randrange(len(inflight)); s, kind, k = inflight.pop(i)
            if kind == 'tma': full[s].complete_tx(8192)
            else: full[s].arrive(1)
            slot_step[s] = k
        elif a == 'C':
            w = cw[x]; s, ph = w['pos']
            # data check: the stage holds step w['step']
            assert slot_step[s] == w['step'], ("stale data", x, w['step'], slot_step[s])
            if w['prev'] is not None:
                for _ in range(4): empty[w['prev']].arrive(1)
            w['prev'] = s
            # next step of this warpgroup: the global index parity is the warpgroup's (NEW)
            g_old = w['step'] // nbc
            st = w['step'] + 2
            if MODE == 'old':
                bc = w['step'] % nbc
                st = w['step'] + 2 if bc + 2 < nbc else (g_old + 1) * nbc + x
            if st // nbc != g_old:
                for _ in range(4): empty[s].arrive(1)
                w['prev'] = None
            adv = st - w['step']
            w['step'] = st
            w['pos'][0] += adv
            while w['pos'][0] >= stages: w['pos'][0] -= stages; w['pos'][1] ^= 1
        elif a == 'F':
            cw[x]['done'] = True
MODE = sys.argv[1] if len(sys.argv) > 1 else 'new'
for nbc, stages, ng in [(16,8,2),(8,8,3),(5,8,3),(5,8,6),(7,8,5),(5,4,6),(7,10,4),(3,4,8)]:
    res = set()
    for seed in range(150):
        try: res.add(run(nbc, stages, ng, seed))
        except AssertionError as e: res.add("ASSERT "+str(e)[:80])
    print(nbc, stages, ng, res)
