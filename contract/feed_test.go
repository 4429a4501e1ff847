package contract

import "testing"

func TestFeedRestart(t *testing.T) {
	tests := []struct {
		name   string
		epoch  string
		cursor uint64
		page   FeedPage
		want   bool
	}{
		{"first read", "", 0, FeedPage{Epoch: "a", Last: 5}, false},
		{"same epoch, ahead", "a", 3, FeedPage{Epoch: "a", Last: 5}, false},
		{"same epoch, at the end", "a", 5, FeedPage{Epoch: "a", Last: 5}, false},
		{"new epoch", "a", 3, FeedPage{Epoch: "b", Last: 5}, true},
		{"storage went back", "a", 7, FeedPage{Epoch: "a", Last: 5}, true},
		{"first read above last", "", 7, FeedPage{Epoch: "a", Last: 5}, true},
		{"a plugin with no epoch", "", 7, FeedPage{Last: 0}, false},
	}
	for _, tt := range tests {
		if got := FeedRestart(tt.epoch, tt.cursor, &tt.page); got != tt.want {
			t.Errorf("%s: FeedRestart = %v, want %v", tt.name, got, tt.want)
		}
	}
}
