package attach

import "sync"

// recordLocks serialise the work on one record's files across both
// directions: the upload of an app's file and the webhook of that very
// upload cannot be decided at once, so the webhook always finds the upload
// recorded (its own echo) instead of racing it.
type recordLocks struct {
	mu    sync.Mutex
	locks map[string]*recordLock
}

type recordLock struct {
	sync.Mutex
	users int
}

// lock takes the record's lock and returns its release.
func (l *recordLocks) lock(key string) (unlock func()) {
	l.mu.Lock()
	if l.locks == nil {
		l.locks = map[string]*recordLock{}
	}
	rl := l.locks[key]
	if rl == nil {
		rl = &recordLock{}
		l.locks[key] = rl
	}
	rl.users++
	l.mu.Unlock()
	rl.Lock()
	return func() {
		rl.Unlock()
		l.mu.Lock()
		if rl.users--; rl.users == 0 {
			delete(l.locks, key)
		}
		l.mu.Unlock()
	}
}
