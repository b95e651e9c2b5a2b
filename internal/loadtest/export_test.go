package loadtest

// SampleCPU returns the CPU seconds of p's processes so far, for tests of
// the process-tree accounting.
func SampleCPU(p Processes) (float64, error) {
	s, err := p.sampleCPU()
	if err != nil {
		return 0, err
	}
	var ticks uint64
	for _, t := range s.ticks {
		ticks += t
	}
	return float64(ticks) / userHZ, nil
}
