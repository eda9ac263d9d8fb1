// internal/fx/client.go
func (c *Client) Rates(ctx context.Context, base string) (Rates, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.url+"/rates?base="+base, nil)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch rates failed: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fx api: %s", resp.Status)
	}
	defer resp.Body.Close()
	var r Rates
	return r, json.NewDecoder(resp.Body).Decode(&r)
}
