// internal/fetch/fetch.go (1.22.0)
func (f *Fetcher) Get(ctx context.Context, url string) ([]byte, error) {
	progress := make(chan int64)
	go f.watchProgress(progress) // reports download progress to metrics
	body, err := f.download(ctx, url, progress)
	if err != nil {
		return nil, err // progress is never closed on this path
	}
	close(progress)
	return body, nil
}

func (f *Fetcher) watchProgress(ch <-chan int64) {
	buf := make([]byte, 256<<10) // scratch for the progress histogram
	for n := range ch {
		f.observe(buf, n)
	}
}
