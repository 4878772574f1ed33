package docker

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"
)

func TestViewSetSaysWhenToSync(t *testing.T) {
	web := Container{ID: "a", Name: "web", NetworkMode: "bridge", IPv4: []netip.Addr{netip.MustParseAddr("172.17.0.2")}}
	moved := web
	moved.IPv4 = []netip.Addr{netip.MustParseAddr("172.17.0.3")}
	down, refused := errors.New("docker down"), errors.New("connection refused")
	v := NewView()
	for _, step := range []struct {
		what  string
		list  []Container
		err   error
		event bool
		sync  bool
	}{
		{"first listing", []Container{web}, nil, false, true},
		{"the same, periodic", []Container{web}, nil, false, false},
		{"the same after an event (a restart keeps ID and address)", []Container{web}, nil, true, true},
		{"an address changed", []Container{moved}, nil, false, true},
		{"Docker fails", []Container{moved}, down, false, true},
		{"fails the same way", nil, down, false, false},
		{"fails another way", nil, refused, false, true},
		{"answers again", []Container{moved}, nil, false, true},
		{"a container left", nil, nil, false, true},
	} {
		if got := v.Set(Snapshot{Containers: step.list, Err: step.err, At: time.Now(), Took: time.Millisecond}, step.event); got != step.sync {
			t.Errorf("%s: sync %v, want %v", step.what, got, step.sync)
		}
		l := v.Get(context.Background(), time.Hour)
		if step.err != nil && len(l.Containers) != 0 {
			t.Errorf("%s: a failed listing kept %d containers", step.what, len(l.Containers))
		}
	}
}

func TestViewRefusesAStaleListing(t *testing.T) {
	v := NewView()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if l := v.Get(ctx, time.Hour); !errors.Is(l.Err, errNotListed) {
		t.Fatalf("before the first listing: %v", l.Err)
	}
	v.Set(Snapshot{Containers: []Container{{ID: "a"}}, At: time.Now().Add(-time.Minute), Took: time.Millisecond}, false)
	l := v.Get(context.Background(), 30*time.Second)
	if l.Err == nil || len(l.Containers) != 0 {
		t.Fatalf("a minute-old listing was served: %+v", l)
	}
}
