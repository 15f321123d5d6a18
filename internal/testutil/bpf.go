package testutil

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	cebpf "github.com/cilium/ebpf"
)

// BPFHeld is what eBPF objects this process holds open: the ids of the
// programs and maps its file descriptors name (/proc/self/fdinfo's prog_id
// and map_id). Other test packages load programs at the same time, so a
// leak check counts this process's, not the host's.
type BPFHeld struct {
	Progs, Maps map[uint32]bool
}

func (h BPFHeld) String() string {
	return fmt.Sprintf("%d programs %v, %d maps %v", len(h.Progs), keys(h.Progs), len(h.Maps), keys(h.Maps))
}

func keys(m map[uint32]bool) []uint32 {
	var ks []uint32
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

// HeldBPF lists the eBPF programs and maps this process's descriptors
// hold.
func HeldBPF(t testing.TB) BPFHeld {
	t.Helper()
	h := BPFHeld{Progs: map[uint32]bool{}, Maps: map[uint32]bool{}}
	ents, err := os.ReadDir("/proc/self/fdinfo")
	if err != nil {
		t.Fatalf("list /proc/self/fdinfo: %v", err)
	}
	for _, e := range ents {
		f, err := os.Open("/proc/self/fdinfo/" + e.Name())
		if err != nil {
			continue // closed meanwhile
		}
		s := bufio.NewScanner(f)
		for s.Scan() {
			k, v, ok := strings.Cut(s.Text(), ":")
			if !ok || k != "prog_id" && k != "map_id" {
				continue
			}
			id, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
			if err != nil {
				continue
			}
			if k == "prog_id" {
				h.Progs[uint32(id)] = true
			} else {
				h.Maps[uint32(id)] = true
			}
		}
		f.Close()
	}
	return h
}

// BPFProgramID is the id of the eBPF program descriptor fd names.
func BPFProgramID(t testing.TB, fd int) uint32 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", fd))
	if err != nil {
		t.Fatalf("fdinfo of fd %d: %v", fd, err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "prog_id:"); ok {
			id, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
			if err == nil {
				return uint32(id)
			}
		}
	}
	t.Fatalf("fd %d is no eBPF program", fd)
	return 0
}

// BPFProgramExists says whether the host still has eBPF program id: a
// program lives while a descriptor, a TAP or a link holds it.
func BPFProgramExists(t testing.TB, id uint32) bool {
	t.Helper()
	p, err := cebpf.NewProgramFromID(cebpf.ProgramID(id))
	if errors.Is(err, os.ErrNotExist) {
		return false
	}
	if err != nil {
		t.Fatalf("look up eBPF program %d: %v", id, err)
	}
	p.Close()
	return true
}
