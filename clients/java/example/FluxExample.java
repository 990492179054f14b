package io.flux.example;

import com.google.protobuf.Any;
import com.google.protobuf.ByteString;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.BadRequest;
import com.google.rpc.ErrorInfo;
import io.flux.api.v1.BatchSearchRequest;
import io.flux.api.v1.BatchSearchResponse;
import io.flux.api.v1.DescribeIndexRequest;
import io.flux.api.v1.Filter;
import io.flux.api.v1.FloatVectors;
import io.flux.api.v1.GetServerInfoRequest;
import io.flux.api.v1.GetServerInfoResponse;
import io.flux.api.v1.IndexDescription;
import io.flux.api.v1.Neighbors;
import io.flux.api.v1.SearchRequest;
import io.flux.api.v1.SearchResponse;
import io.flux.api.v1.VectorServiceGrpc;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.health.v1.HealthCheckRequest;
import io.grpc.health.v1.HealthCheckResponse;
import io.grpc.health.v1.HealthGrpc;
import io.grpc.protobuf.StatusProto;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;

/**
 * Queries a Flux server the way a consuming Java service would: health check, the server's
 * versions, the index's description, Search, BatchSearch, a Search that leaves ids out by their
 * hashes, and two errors read through their google.rpc details, with deadlines and retries
 * configured on the channel. Every call needs the reader role only.
 *
 * <pre>
 * java -cp "$(make -s java-classpath)" io.flux.example.FluxExample TARGET INDEX QUERIES [K]
 * </pre>
 *
 * QUERIES is a file of little-endian float32 values, one query after another (numpy's
 * {@code queries.astype("<f4").tofile(path)}); the dimension is asked from the server.
 * Prints one tab-separated line per answer, for people and for Flux's tests alike.
 */
public final class FluxExample {
  private static final long DEADLINE_SECONDS = 5;
  private static final Metadata.Key<String> REASON =
      Metadata.Key.of("flux-error-reason", Metadata.ASCII_STRING_MARSHALLER);

  private FluxExample() {}

  public static void main(String[] args) throws IOException, InterruptedException {
    if (args.length < 3 || args.length > 4) {
      System.err.println("usage: FluxExample TARGET INDEX QUERIES [K]");
      System.exit(2);
    }
    String target = args[0];
    String index = args[1];
    int k = args.length == 4 ? Integer.parseInt(args[3]) : 10;

    ManagedChannel channel =
        ManagedChannelBuilder.forTarget(target)
            .usePlaintext() // useTransportSecurity() against a TLS endpoint
            .defaultServiceConfig(serviceConfig())
            .enableRetry()
            .build();
    try {
      HealthCheckResponse health =
          HealthGrpc.newBlockingStub(channel)
              .withDeadlineAfter(DEADLINE_SECONDS, TimeUnit.SECONDS)
              .check(HealthCheckRequest.newBuilder().setService("").build());
      System.out.println("health\t" + health.getStatus());

      VectorServiceGrpc.VectorServiceBlockingStub vectors = VectorServiceGrpc.newBlockingStub(channel);
      GetServerInfoResponse server =
          vectors
              .withDeadlineAfter(DEADLINE_SECONDS, TimeUnit.SECONDS)
              .getServerInfo(GetServerInfoRequest.getDefaultInstance());
      System.out.printf(
          "server\t%s\t%s\t%d%n",
          server.getContractVersion(), server.getServerVersion(), server.getBackendsCount());

      IndexDescription info =
          vectors
              .withDeadlineAfter(DEADLINE_SECONDS, TimeUnit.SECONDS)
              .describeIndex(DescribeIndexRequest.newBuilder().setIndex(index).build())
              .getIndex();
      System.out.printf(
          "index\t%s\t%d\t%d\t%d%n",
          info.getName(), info.getDimension(), info.getCount(), info.getVersion());
      float[][] queries = readQueries(args[2], info.getDimension());

      for (int row = 0; row < queries.length; row++) {
        SearchResponse response =
            vectors
                .withDeadlineAfter(DEADLINE_SECONDS, TimeUnit.SECONDS)
                .search(query(index, queries[row], k).build());
        print("search", row, response.getVersion(), response.getNeighbors());
      }

      BatchSearchResponse batch =
          vectors
              .withDeadlineAfter(DEADLINE_SECONDS, TimeUnit.SECONDS)
              .batchSearch(
                  BatchSearchRequest.newBuilder()
                      .setIndex(index)
                      .setQueries(encode(queries))
                      .setK(k)
                      .build());
      for (int row = 0; row < batch.getResultsCount(); row++) {
        print("batch", row, batch.getVersion(), batch.getResults(row));
      }

      // What the user already played, left out by the ids' 64-bit hashes: here the first query's
      // two nearest items. Cheaper than the ids themselves for lists of thousands.
      Neighbors first = batch.getResults(0);
      Filter played =
          Filter.newBuilder()
              .addExcludeIdHashes(idHash(first.getIds(0)))
              .addExcludeIdHashes(idHash(first.getIds(1)))
              .build();
      SearchResponse unplayed =
          vectors
              .withDeadlineAfter(DEADLINE_SECONDS, TimeUnit.SECONDS)
              .search(query(index, queries[0], k).setFilter(played).build());
      print("unplayed", 0, unplayed.getVersion(), unplayed.getNeighbors());

      // An index that does not exist: NOT_FOUND; the cause is in a trailer and in the status details.
      try {
        vectors
            .withDeadlineAfter(DEADLINE_SECONDS, TimeUnit.SECONDS)
            .search(query(index + "-missing", queries[0], k).build());
        System.out.println("error\tnone");
      } catch (StatusRuntimeException e) {
        Status status = e.getStatus();
        Metadata trailers = e.getTrailers();
        String trailer = trailers == null ? null : trailers.get(REASON);
        ErrorInfo why = errorInfo(e);
        System.out.printf(
            "error\t%s\t%s\t%s\t%s\t%s%n",
            status.getCode(), trailer, why.getReason(), why.getDomain(), status.getDescription());
      }

      // A query one value too long: INVALID_ARGUMENT, naming the field at fault (BadRequest).
      float[] tooLong = Arrays.copyOf(queries[0], queries[0].length + 1);
      try {
        vectors
            .withDeadlineAfter(DEADLINE_SECONDS, TimeUnit.SECONDS)
            .search(query(index, tooLong, k).build());
        System.out.println("invalid\tnone");
      } catch (StatusRuntimeException e) {
        ErrorInfo why = errorInfo(e);
        BadRequest bad = detail(e, BadRequest.class);
        System.out.printf(
            "invalid\t%s\t%s\t%s\t%s%n",
            e.getStatus().getCode(),
            why.getReason(),
            bad == null ? "" : bad.getFieldViolations(0).getField(),
            why.getMetadataOrDefault("index", ""));
      }
    } finally {
      channel.shutdownNow().awaitTermination(DEADLINE_SECONDS, TimeUnit.SECONDS);
    }
  }

  /**
   * Round-robin over every address the target resolves to; retry UNAVAILABLE (and CANCELLED, which
   * a gRPC Python server shutting down sends) with backoff, for searches and the control plane's
   * reads only: they change nothing, so re-sending them is safe.
   */
  private static Map<String, Object> serviceConfig() {
    Map<String, Object> retry = new HashMap<>();
    retry.put("maxAttempts", 5.0);
    retry.put("initialBackoff", "0.25s");
    retry.put("maxBackoff", "2s");
    retry.put("backoffMultiplier", 2.0);
    retry.put("retryableStatusCodes", Arrays.asList("UNAVAILABLE", "CANCELLED"));
    List<Object> names = new ArrayList<>();
    names.add(Collections.singletonMap("service", "flux_api.v1.VectorService"));
    for (String read : Arrays.asList("ListIndexes", "GetIndex", "ListVersions", "ListAliases")) {
      Map<String, Object> name = new HashMap<>();
      name.put("service", "flux_api.v1.AdminService");
      name.put("method", read);
      names.add(name);
    }
    Map<String, Object> method = new HashMap<>();
    method.put("name", names);
    method.put("retryPolicy", retry);
    Map<String, Object> config = new HashMap<>();
    config.put(
        "loadBalancingConfig",
        Collections.singletonList(Collections.singletonMap("round_robin", new HashMap<>())));
    config.put("methodConfig", Collections.singletonList(method));
    return config;
  }

  /** The ErrorInfo of a failed call: Flux's stable reason (e.g. INDEX_NOT_FOUND) and metadata. */
  static ErrorInfo errorInfo(StatusRuntimeException e) {
    ErrorInfo info = detail(e, ErrorInfo.class);
    return info == null ? ErrorInfo.getDefaultInstance() : info;
  }

  /** The first detail of type {@code type} in the call's google.rpc.Status, or null. */
  static <T extends com.google.protobuf.Message> T detail(StatusRuntimeException e, Class<T> type) {
    com.google.rpc.Status status = StatusProto.fromThrowable(e);
    if (status == null) {
      return null;
    }
    for (Any detail : status.getDetailsList()) {
      if (detail.is(type)) {
        try {
          return detail.unpack(type);
        } catch (InvalidProtocolBufferException ignored) {
          return null;
        }
      }
    }
    return null;
  }

  /** The wire form of vectors: little-endian float32 values, row after row. */
  static FloatVectors encode(float[][] rows) {
    int dimension = rows[0].length;
    ByteBuffer buffer =
        ByteBuffer.allocate(4 * dimension * rows.length).order(ByteOrder.LITTLE_ENDIAN);
    for (float[] row : rows) {
      buffer.asFloatBuffer().put(row);
      buffer.position(buffer.position() + 4 * dimension);
    }
    buffer.flip();
    return FloatVectors.newBuilder()
        .setDimension(dimension)
        .setData(ByteString.copyFrom(buffer))
        .build();
  }

  private static float[][] readQueries(String path, int dimension) throws IOException {
    ByteBuffer data = ByteBuffer.wrap(Files.readAllBytes(Paths.get(path))).order(ByteOrder.LITTLE_ENDIAN);
    if (dimension == 0 || data.remaining() % (4 * dimension) != 0) {
      throw new IOException(path + " does not hold whole " + dimension + "-dimensional float32 vectors");
    }
    float[][] rows = new float[data.remaining() / (4 * dimension)][dimension];
    for (float[] row : rows) {
      data.asFloatBuffer().get(row);
      data.position(data.position() + 4 * dimension);
    }
    return rows;
  }

  /** A Search for the k nearest neighbours of one vector, to add options to (a filter) and build. */
  private static SearchRequest.Builder query(String index, float[] vector, int k) {
    return SearchRequest.newBuilder()
        .setIndex(index)
        .setVector(encode(new float[][] {vector}))
        .setK(k);
  }

  /** An id as Filter.exclude_id_hashes carries it: 64-bit FNV-1a over its UTF-8 bytes. */
  static long idHash(String id) {
    long hash = 0xcbf29ce484222325L;
    for (byte b : id.getBytes(StandardCharsets.UTF_8)) {
      hash ^= b & 0xff;
      hash *= 0x100000001b3L;
    }
    return hash;
  }

  private static void print(String kind, int row, long version, Neighbors neighbors) {
    StringBuilder ids = new StringBuilder();
    StringBuilder distances = new StringBuilder();
    for (int i = 0; i < neighbors.getIdsCount(); i++) {
      ids.append(i == 0 ? "" : ",").append(neighbors.getIds(i));
      distances.append(i == 0 ? "" : ",").append(neighbors.getDistances(i));
    }
    System.out.printf("%s\t%d\t%d\t%s\t%s%n", kind, row, version, ids, distances);
  }
}
