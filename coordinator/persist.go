package coordinator

import (
	"context"
	"sync"
	"time"

	"github.com/flotilla-io/flotilla/coordinator/metastore"
	"github.com/flotilla-io/flotilla/subjects"
)

// persister writes job records to the metadata store off the loop
// (engine.PersistJob). One goroutine writes; a job's records land in the
// order put, and a record put while an older one of the same job waits
// replaces it. A write that got no answer (metastore.Transient) is retried,
// with backoff, until it succeeds, a newer record replaces it or the term
// ends: a job's record is what the next term resumes, so it is not given
// up on. One refused (a newer term wrote the job) is dropped: this term is
// over, and the next write of the job would be refused too.
type persister struct {
	c    *leader
	mu   sync.Mutex
	wake chan struct{} // 1-buffered: a record waits
	// pending are records not yet written; puts and written count records
	// per job, so that flush knows when what it waits for landed.
	pending map[string]subjects.JobRecord
	puts    map[string]uint64
	written map[string]uint64
	lastErr map[string]error
	changed chan struct{} // closed and replaced whenever a write ends
}

func newPersister(c *leader) *persister {
	p := &persister{c: c, wake: make(chan struct{}, 1), pending: map[string]subjects.JobRecord{},
		puts: map[string]uint64{}, written: map[string]uint64{}, lastErr: map[string]error{}, changed: make(chan struct{})}
	go p.run()
	return p
}

// put queues rec. It never blocks.
func (p *persister) put(rec subjects.JobRecord) {
	p.mu.Lock()
	p.pending[rec.Spec.Name] = rec
	p.puts[rec.Spec.Name]++
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// flush waits until every record of job put before it has been written
// (or refused), and returns the error of the last attempt if it failed or
// ctx ended first.
func (p *persister) flush(ctx context.Context, job string) error {
	p.mu.Lock()
	want := p.puts[job]
	for p.written[job] < want {
		changed := p.changed
		p.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			p.mu.Lock()
			err := p.lastErr[job]
			p.mu.Unlock()
			if err == nil {
				err = ctx.Err()
			}
			return err
		case <-p.c.done:
			return errTermEnded
		}
		p.mu.Lock()
	}
	err := p.lastErr[job]
	p.mu.Unlock()
	return err
}

// errTermEnded is flush's error when the term ended first.
var errTermEnded = subjects.Errorf(subjects.CodeNotLeader, "the leader's term ended")

func (p *persister) run() {
	backoff := 100 * time.Millisecond
	for {
		select {
		case <-p.wake:
		case <-p.c.done:
			return
		}
		for {
			p.mu.Lock()
			job, rec, n, ok := p.next()
			p.mu.Unlock()
			if !ok {
				break
			}
			ctx, cancel := context.WithTimeout(context.Background(), p.c.cfg.RequestTimeout)
			err := p.c.store.PutJob(ctx, p.c.epoch, rec)
			cancel()
			final := err == nil || !metastore.Transient(err)
			p.mu.Lock()
			if final {
				p.written[job] = max(p.written[job], n)
				if p.puts[job] == n {
					delete(p.pending, job)
				}
			}
			if err == nil {
				delete(p.lastErr, job)
			} else {
				p.lastErr[job] = err
			}
			close(p.changed)
			p.changed = make(chan struct{})
			p.mu.Unlock()
			if err != nil && final {
				p.c.log.Error("persisting job: refused", "job", job, "state", rec.State.String(), "err", err)
			}
			if !final {
				p.c.log.Error("persisting job (retrying)", "job", job, "state", rec.State.String(), "err", err)
				select {
				case <-time.After(backoff):
				case <-p.c.done:
					return
				}
				backoff = min(2*backoff, 5*time.Second)
				continue
			}
			backoff = 100 * time.Millisecond
		}
	}
}

// next picks a pending record (the job first by name) and the count of
// records of its job it covers. Called with mu held.
func (p *persister) next() (string, subjects.JobRecord, uint64, bool) {
	var job string
	for name := range p.pending {
		if job == "" || name < job {
			job = name
		}
	}
	if job == "" {
		return "", subjects.JobRecord{}, 0, false
	}
	return job, p.pending[job], p.puts[job], true
}
