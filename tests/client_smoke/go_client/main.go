// Calls the profile store's ListArtists (every page) and a health check with the Go code that
// buf.gen.go.yaml generates; prints one JSON line.
// Usage: go_client <profile store host:port>
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	profilestorev1 "github.com/stylebase/stylebase/gen/go/stylebase/profile_store/v1"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func main() {
	conn, err := grpc.Dial(os.Args[1], grpc.WithInsecure())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	store := profilestorev1.NewProfileStoreServiceClient(conn)
	names := []string{}
	for token := ""; ; {
		page, err := store.ListArtists(ctx, &profilestorev1.ListArtistsRequest{
			PageSize: 100, PageToken: token})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		for _, artist := range page.GetArtists() {
			names = append(names, artist.GetName())
		}
		if token = page.GetNextPageToken(); token == "" {
			break
		}
	}
	health, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{
		Service: "stylebase.profile_store.v1.ProfileStoreService"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out, _ := json.Marshal(map[string]interface{}{"artists": names, "health": health.GetStatus().String()})
	fmt.Println(string(out))
}
