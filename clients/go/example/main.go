// Command example queries a Flux server the way a consuming Go service would: health check,
// the server's versions, the index's description, Search, BatchSearch, a Search that leaves ids
// out by their hashes, and two errors read through their google.rpc details, with a deadline on
// every call and retries configured on the channel. Every call needs the reader role only.
//
//	example TARGET INDEX QUERIES [K]
//
// QUERIES is a file of little-endian float32 values, one query after another (numpy's
// queries.astype("<f4").tofile(path)); the dimension is asked from the server. It prints one
// tab-separated line per answer, for people and for Flux's tests alike.
package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	fluxapi "flux.vectors/api/flux_api/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const deadline = 5 * time.Second

// serviceConfig spreads calls over every address the target resolves to and retries
// UNAVAILABLE (and CANCELLED, which a gRPC Python server shutting down sends) with backoff,
// for VectorService only: its calls change nothing, so re-sending them is safe.
const serviceConfig = `{
  "loadBalancingConfig": [{"round_robin": {}}],
  "methodConfig": [{
    "name": [{"service": "flux_api.v1.VectorService"}],
    "retryPolicy": {
      "maxAttempts": 5, "initialBackoff": "0.25s", "maxBackoff": "2s", "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"]
    }
  }]
}`

func main() {
	if len(os.Args) < 4 || len(os.Args) > 5 {
		fmt.Fprintln(os.Stderr, "usage: example TARGET INDEX QUERIES [K]")
		os.Exit(2)
	}
	target, index, path := os.Args[1], os.Args[2], os.Args[3]
	k := uint32(10)
	if len(os.Args) == 5 {
		parsed, err := strconv.ParseUint(os.Args[4], 10, 32)
		check(err)
		k = uint32(parsed)
	}

	// grpc.WithTransportCredentials(credentials.NewTLS(...)) against a TLS endpoint.
	conn, err := grpc.Dial(target, grpc.WithInsecure(), grpc.WithDefaultServiceConfig(serviceConfig))
	check(err)
	defer conn.Close()
	vectors := fluxapi.NewVectorServiceClient(conn)

	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	health, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	cancel()
	check(err)
	fmt.Printf("health\t%s\n", health.GetStatus())

	ctx, cancel = context.WithTimeout(context.Background(), deadline)
	server, err := vectors.GetServerInfo(ctx, &fluxapi.GetServerInfoRequest{})
	cancel()
	check(err)
	fmt.Printf("server\t%s\t%s\t%d\n", server.GetContractVersion(), server.GetServerVersion(), len(server.GetBackends()))

	ctx, cancel = context.WithTimeout(context.Background(), deadline)
	described, err := vectors.DescribeIndex(ctx, &fluxapi.DescribeIndexRequest{Index: index})
	cancel()
	check(err)
	info := described.GetIndex()
	fmt.Printf("index\t%s\t%d\t%d\t%d\n", info.GetName(), info.GetDimension(), info.GetCount(), info.GetVersion())
	queries := readQueries(path, int(info.GetDimension()))

	for row, query := range queries {
		ctx, cancel = context.WithTimeout(context.Background(), deadline)
		answer, err := vectors.Search(ctx, &fluxapi.SearchRequest{Index: index, Vector: encode([][]float32{query}), K: k})
		cancel()
		check(err)
		show("search", row, answer.GetVersion(), answer.GetNeighbors())
	}

	ctx, cancel = context.WithTimeout(context.Background(), deadline)
	batch, err := vectors.BatchSearch(ctx, &fluxapi.BatchSearchRequest{Index: index, Queries: encode(queries), K: k})
	cancel()
	check(err)
	for row, neighbors := range batch.GetResults() {
		show("batch", row, batch.GetVersion(), neighbors)
	}

	// What the user already played, left out by the ids' 64-bit FNV-1a hashes (hash/fnv's New64a):
	// here the first query's two nearest items. Cheaper than the ids themselves for lists of thousands.
	var played []uint64
	for _, id := range batch.GetResults()[0].GetIds()[:2] {
		hash := fnv.New64a()
		hash.Write([]byte(id))
		played = append(played, hash.Sum64())
	}
	ctx, cancel = context.WithTimeout(context.Background(), deadline)
	unplayed, err := vectors.Search(ctx, &fluxapi.SearchRequest{
		Index: index, Vector: encode([][]float32{queries[0]}), K: k,
		Filter: &fluxapi.Filter{ExcludeIdHashes: played},
	})
	cancel()
	check(err)
	show("unplayed", 0, unplayed.GetVersion(), unplayed.GetNeighbors())

	// An index that does not exist: NOT_FOUND; the cause is in a trailer and in the status details.
	var trailer metadata.MD
	ctx, cancel = context.WithTimeout(context.Background(), deadline)
	_, err = vectors.Search(ctx, &fluxapi.SearchRequest{
		Index: index + "-missing", Vector: encode([][]float32{queries[0]}), K: k,
	}, grpc.Trailer(&trailer))
	cancel()
	if err == nil {
		fmt.Println("error\tnone")
	} else {
		failure := status.Convert(err)
		why := errorInfo(failure)
		fmt.Printf("error\t%s\t%s\t%s\t%s\t%s\n", failure.Code(), strings.Join(trailer.Get("flux-error-reason"), ","),
			why.GetReason(), why.GetDomain(), failure.Message())
	}

	// A query one value too long: INVALID_ARGUMENT, naming the field at fault (BadRequest).
	tooLong := append(append([]float32{}, queries[0]...), 0)
	ctx, cancel = context.WithTimeout(context.Background(), deadline)
	_, err = vectors.Search(ctx, &fluxapi.SearchRequest{Index: index, Vector: encode([][]float32{tooLong}), K: k})
	cancel()
	if err == nil {
		fmt.Println("invalid\tnone")
	} else {
		failure := status.Convert(err)
		why := errorInfo(failure)
		field := ""
		for _, detail := range failure.Details() {
			if bad, ok := detail.(*errdetails.BadRequest); ok && len(bad.GetFieldViolations()) > 0 {
				field = bad.GetFieldViolations()[0].GetField()
			}
		}
		fmt.Printf("invalid\t%s\t%s\t%s\t%s\n", failure.Code(), why.GetReason(), field, why.GetMetadata()["index"])
	}
}

// errorInfo is the ErrorInfo of a failed call: Flux's stable reason (e.g. INDEX_NOT_FOUND) and metadata.
func errorInfo(failure *status.Status) *errdetails.ErrorInfo {
	for _, detail := range failure.Details() {
		if info, ok := detail.(*errdetails.ErrorInfo); ok {
			return info
		}
	}
	return &errdetails.ErrorInfo{}
}

// encode is the wire form of vectors: little-endian float32 values, row after row.
func encode(rows [][]float32) *fluxapi.FloatVectors {
	dimension := len(rows[0])
	data := make([]byte, 0, 4*dimension*len(rows))
	for _, row := range rows {
		for _, value := range row {
			data = binary.LittleEndian.AppendUint32(data, math.Float32bits(value))
		}
	}
	return &fluxapi.FloatVectors{Dimension: uint32(dimension), Data: data}
}

func readQueries(path string, dimension int) [][]float32 {
	data, err := os.ReadFile(path)
	check(err)
	if dimension == 0 || len(data)%(4*dimension) != 0 {
		check(fmt.Errorf("%s does not hold whole %d-dimensional float32 vectors", path, dimension))
	}
	rows := make([][]float32, len(data)/(4*dimension))
	for i := range rows {
		rows[i] = make([]float32, dimension)
		for j := range rows[i] {
			offset := 4 * (i*dimension + j)
			rows[i][j] = math.Float32frombits(binary.LittleEndian.Uint32(data[offset:]))
		}
	}
	return rows
}

func show(kind string, row int, version uint64, neighbors *fluxapi.Neighbors) {
	distances := make([]string, len(neighbors.GetDistances()))
	for i, distance := range neighbors.GetDistances() {
		// The shortest form that reads back as the same float32.
		distances[i] = strconv.FormatFloat(float64(distance), 'g', -1, 32)
	}
	fmt.Printf("%s\t%d\t%d\t%s\t%s\n", kind, row, version, strings.Join(neighbors.GetIds(), ","), strings.Join(distances, ","))
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
