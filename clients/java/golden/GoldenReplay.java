package io.flux.golden;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import com.google.protobuf.Any;
import com.google.protobuf.Descriptors.FieldDescriptor;
import com.google.protobuf.Descriptors.OneofDescriptor;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.protobuf.Message;
import com.google.protobuf.util.JsonFormat;
import com.google.rpc.BadRequest;
import com.google.rpc.ErrorInfo;
import io.flux.api.v1.AdminServiceGrpc;
import io.flux.api.v1.VectorServiceGrpc;
import io.flux.api.v1.WriteServiceGrpc;
import io.grpc.CallOptions;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.MethodDescriptor;
import io.grpc.ServiceDescriptor;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;
import io.grpc.stub.ClientCalls;
import io.grpc.stub.StreamObserver;
import java.io.IOException;
import java.io.Reader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

/**
 * Replays the golden examples of the Flux contract (protos/examples/, see its README) against a
 * fresh server of their fixture, with the generated Java types: each request is read from its
 * protobuf JSON with JsonFormat into the method's request type, sent, and the answer compared
 * with the expected response read into the method's response type, after clearing the fields the
 * case ignores; an error is compared by status code, ErrorInfo reason and metadata, and the fields
 * of its BadRequest violations, never by its message. A method that answers with a stream
 * (StreamSearch) is compared answer by answer, a failed message's answer (its error) as an error
 * is, then by how the stream ended.
 *
 * <pre>
 * java -cp "$(make -s java-golden-classpath)" io.flux.golden.GoldenReplay TARGET EXAMPLES
 * </pre>
 *
 * Prints one tab-separated line per case ({@code ok FILE NAME} or {@code different FILE NAME
 * WHAT}), then a count; exits 1 when any case differs.
 */
public final class GoldenReplay {
  private static final long DEADLINE_SECONDS = 30;
  private static final String DOMAIN = "flux.vectors";

  private final ManagedChannel channel;
  private final Map<String, MethodDescriptor<?, ?>> methods = new HashMap<>();

  private GoldenReplay(ManagedChannel channel) {
    this.channel = channel;
    for (ServiceDescriptor service :
        Arrays.asList(
            VectorServiceGrpc.getServiceDescriptor(),
            AdminServiceGrpc.getServiceDescriptor(),
            WriteServiceGrpc.getServiceDescriptor())) {
      for (MethodDescriptor<?, ?> method : service.getMethods()) {
        methods.put(method.getFullMethodName(), method);
      }
    }
  }

  public static void main(String[] args) throws IOException, InterruptedException {
    if (args.length != 2) {
      System.err.println("usage: GoldenReplay TARGET EXAMPLES");
      System.exit(2);
    }
    Path examples = Paths.get(args[1]);
    ManagedChannel channel = ManagedChannelBuilder.forTarget(args[0]).usePlaintext().build();
    int passed = 0;
    int failed = 0;
    try {
      GoldenReplay replay = new GoldenReplay(channel);
      for (JsonElement file : read(examples.resolve("fixture.json")).getAsJsonArray("files")) {
        String name = file.getAsString();
        for (JsonElement element : read(examples.resolve(name)).getAsJsonArray("cases")) {
          JsonObject example = element.getAsJsonObject();
          String difference = replay.check(example);
          String caseName = example.has("name") ? example.get("name").getAsString() : "?";
          if (difference == null) {
            passed++;
            System.out.printf("ok\t%s\t%s%n", name, caseName);
          } else {
            failed++;
            System.out.printf(
                "different\t%s\t%s\t%s%n", name, caseName, difference.replace('\n', ' '));
          }
        }
      }
    } finally {
      channel.shutdownNow().awaitTermination(DEADLINE_SECONDS, TimeUnit.SECONDS);
    }
    System.out.printf("%d passed, %d failed%n", passed, failed);
    System.exit(failed == 0 ? 0 : 1);
  }

  private static JsonObject read(Path path) throws IOException {
    try (Reader reader = Files.newBufferedReader(path, StandardCharsets.UTF_8)) {
      return JsonParser.parseReader(reader).getAsJsonObject();
    }
  }

  /** Null when the server answers the case as the example says, else what differs. */
  private String check(JsonObject example) throws InterruptedException {
    MethodDescriptor<?, ?> method = methods.get(example.get("method").getAsString());
    if (method == null) {
      return "the contract has no method " + example.get("method");
    }
    Message requestType = prototype(method.getRequestMarshaller());
    Message responseType = prototype(method.getResponseMarshaller());
    MethodDescriptor.MethodType type = method.getType();
    boolean streaming =
        type == MethodDescriptor.MethodType.CLIENT_STREAMING
            || type == MethodDescriptor.MethodType.BIDI_STREAMING;
    boolean answersStream =
        type == MethodDescriptor.MethodType.SERVER_STREAMING
            || type == MethodDescriptor.MethodType.BIDI_STREAMING;
    List<Message> requests = new ArrayList<>();
    Message expected = null;
    try {
      JsonArray raw = new JsonArray();
      if (streaming) {
        raw = example.getAsJsonArray("requests");
      } else {
        raw.add(example.get("request"));
      }
      for (JsonElement request : raw) {
        requests.add(parse(request, requestType));
      }
      if (answersStream) {
        return checkStream(example, method, requests, responseType);
      }
      if (example.has("response")) {
        expected = parse(example.get("response"), responseType);
      } else if (!example.has("error")) {
        return "the case has neither a response nor an error";
      }
    } catch (InvalidProtocolBufferException | RuntimeException e) {
      return "the example does not read as the contract's messages: " + e.getMessage();
    }
    Message answer;
    try {
      answer = streaming ? callStream(method, requests) : callUnary(method, requests.get(0));
    } catch (StatusRuntimeException e) {
      JsonObject said = errorOf(e);
      if (expected != null) {
        return "expected a response, got the error " + said;
      }
      return compareErrors(example.getAsJsonObject("error"), said);
    }
    if (expected == null) {
      return "expected the error " + example.get("error") + ", got a response: " + json(answer);
    }
    return compareMessages(expected, answer, ignored(example));
  }

  private static JsonArray ignored(JsonObject example) {
    return example.has("ignore") ? example.getAsJsonArray("ignore") : new JsonArray();
  }

  /** Null when the messages are equal once the fields {@code ignore} names are cleared in both. */
  private static String compareMessages(Message wanted, Message got, JsonArray ignore) {
    Message.Builder want = wanted.toBuilder();
    Message.Builder have = got.toBuilder();
    for (JsonElement path : ignore) {
      try {
        clear(want, path.getAsString(), path.getAsString());
        clear(have, path.getAsString(), path.getAsString());
      } catch (IllegalArgumentException e) {
        return e.getMessage();
      }
    }
    return want.build().equals(have.build()) ? null : "expected " + json(want.build()) + ", got " + json(have.build());
  }

  /** A stream's answers compared one by one with the example's, then how the stream ended. */
  private String checkStream(
      JsonObject example, MethodDescriptor<?, ?> method, List<Message> requests, Message responseType)
      throws InterruptedException, InvalidProtocolBufferException {
    if (!example.has("responses")) {
      return "a case of a method that answers with a stream needs \"responses\"";
    }
    JsonArray written = example.getAsJsonArray("responses");
    List<Message> answers = new ArrayList<>();
    StatusRuntimeException ended = callAnswers(method, requests, answers);
    JsonArray ignore = ignored(example);
    for (int i = 0; i < Math.min(written.size(), answers.size()); i++) {
      String difference = compareAnswer(written.get(i).getAsJsonObject(), responseType, answers.get(i), ignore);
      if (difference != null) {
        return "answer " + i + ": " + difference;
      }
    }
    if (written.size() != answers.size()) {
      return "expected " + written.size() + " answers, got " + answers.size();
    }
    if (ended != null) {
      JsonObject said = errorOf(ended);
      if (!example.has("error")) {
        return "expected the stream to end OK, it ended with the error " + said;
      }
      return compareErrors(example.getAsJsonObject("error"), said);
    }
    return example.has("error") ? "expected the stream to end with the error " + example.get("error") : null;
  }

  /** One answer of a stream: a failed message's by its request id and error, any other by its fields. */
  private static String compareAnswer(JsonObject written, Message responseType, Message got, JsonArray ignore)
      throws InvalidProtocolBufferException {
    JsonObject said = messageErrorOf(got);
    if (written.has("error")) {
      if (said == null) {
        return "expected the error " + written.get("error") + ", got " + json(got);
      }
      JsonElement id = written.has("requestId") ? written.get("requestId") : new com.google.gson.JsonPrimitive("0");
      if (!id.getAsString().equals(said.get("requestId").getAsString())) {
        return "expected request id " + id + ", got " + said.get("requestId");
      }
      return compareErrors(written.getAsJsonObject("error"), said.getAsJsonObject("error"));
    }
    Message wanted = parse(written, responseType);
    if (said != null) {
      return "expected " + json(wanted) + ", got the error " + said;
    }
    return compareMessages(wanted, got, ignore);
  }

  /**
   * An answer whose "result" is its "error" (StreamSearchResponse, a google.rpc.Status field for
   * field) as the examples write it: its request id and that error; null for any other answer.
   */
  private static JsonObject messageErrorOf(Message answer) throws InvalidProtocolBufferException {
    OneofDescriptor result = null;
    for (OneofDescriptor oneof : answer.getDescriptorForType().getOneofs()) {
      if (oneof.getName().equals("result")) {
        result = oneof;
      }
    }
    FieldDescriptor set = result == null ? null : answer.getOneofFieldDescriptor(result);
    if (set == null || !set.getName().equals("error")) {
      return null;
    }
    com.google.rpc.Status status =
        com.google.rpc.Status.parseFrom(((Message) answer.getField(set)).toByteString());
    JsonObject said = new JsonObject();
    FieldDescriptor id = answer.getDescriptorForType().findFieldByName("request_id");
    said.addProperty("requestId", Long.toUnsignedString((Long) answer.getField(id)));
    said.add("error", errorOf(io.grpc.Status.fromCodeValue(status.getCode()).getCode().name(), status));
    return said;
  }

  private static Message prototype(MethodDescriptor.Marshaller<?> marshaller) {
    return (Message) ((MethodDescriptor.PrototypeMarshaller<?>) marshaller).getMessagePrototype();
  }

  private static Message parse(JsonElement json, Message type) throws InvalidProtocolBufferException {
    if (json == null) {
      throw new IllegalArgumentException("a message is missing");
    }
    Message.Builder builder = type.newBuilderForType();
    JsonFormat.parser().merge(json.toString(), builder); // unknown fields are refused
    return builder.build();
  }

  @SuppressWarnings("unchecked")
  private Message callUnary(MethodDescriptor<?, ?> method, Message request) {
    MethodDescriptor<Message, Message> typed = (MethodDescriptor<Message, Message>) method;
    return ClientCalls.blockingUnaryCall(channel, typed, options(), request);
  }

  @SuppressWarnings("unchecked")
  private Message callStream(MethodDescriptor<?, ?> method, List<Message> requests)
      throws InterruptedException {
    MethodDescriptor<Message, Message> typed = (MethodDescriptor<Message, Message>) method;
    CompletableFuture<Message> answer = new CompletableFuture<>();
    StreamObserver<Message> upload =
        ClientCalls.asyncClientStreamingCall(
            channel.newCall(typed, options()),
            new StreamObserver<Message>() {
              private Message last;

              @Override
              public void onNext(Message value) {
                last = value;
              }

              @Override
              public void onError(Throwable t) {
                answer.completeExceptionally(t);
              }

              @Override
              public void onCompleted() {
                answer.complete(last);
              }
            });
    for (Message request : requests) {
      upload.onNext(request);
    }
    upload.onCompleted();
    try {
      return answer.get(DEADLINE_SECONDS + 5, TimeUnit.SECONDS);
    } catch (ExecutionException e) {
      if (e.getCause() instanceof StatusRuntimeException) {
        throw (StatusRuntimeException) e.getCause();
      }
      throw new IllegalStateException(e.getCause());
    } catch (TimeoutException e) {
      throw new IllegalStateException("no answer to the stream", e);
    }
  }

  /**
   * Sends every request, half-closes and collects the answers into {@code answers}, in order;
   * returns the error the stream ended with, or null when it ended OK.
   */
  @SuppressWarnings("unchecked")
  private StatusRuntimeException callAnswers(
      MethodDescriptor<?, ?> method, List<Message> requests, List<Message> answers)
      throws InterruptedException {
    MethodDescriptor<Message, Message> typed = (MethodDescriptor<Message, Message>) method;
    List<Message> received = Collections.synchronizedList(new ArrayList<>());
    CompletableFuture<Throwable> ended = new CompletableFuture<>();
    StreamObserver<Message> observer =
        new StreamObserver<Message>() {
          @Override
          public void onNext(Message value) {
            received.add(value);
          }

          @Override
          public void onError(Throwable t) {
            ended.complete(t);
          }

          @Override
          public void onCompleted() {
            ended.complete(null);
          }
        };
    if (method.getType() == MethodDescriptor.MethodType.BIDI_STREAMING) {
      StreamObserver<Message> upload =
          ClientCalls.asyncBidiStreamingCall(channel.newCall(typed, options()), observer);
      for (Message request : requests) {
        upload.onNext(request);
      }
      upload.onCompleted();
    } else {
      ClientCalls.asyncServerStreamingCall(channel.newCall(typed, options()), requests.get(0), observer);
    }
    Throwable failure;
    try {
      failure = ended.get(DEADLINE_SECONDS + 5, TimeUnit.SECONDS);
    } catch (ExecutionException | TimeoutException e) {
      throw new IllegalStateException("the stream did not end", e);
    }
    answers.addAll(received);
    if (failure == null || failure instanceof StatusRuntimeException) {
      return (StatusRuntimeException) failure;
    }
    throw new IllegalStateException(failure);
  }

  private static CallOptions options() {
    return CallOptions.DEFAULT.withDeadlineAfter(DEADLINE_SECONDS, TimeUnit.SECONDS);
  }

  /** A failed call as the examples write it: code, reason, metadata, violated fields (and a wrong domain). */
  private static JsonObject errorOf(StatusRuntimeException e) {
    return errorOf(e.getStatus().getCode().name(), StatusProto.fromThrowable(e));
  }

  /** A status (its code's name, and its details when it has them) as the examples write errors. */
  private static JsonObject errorOf(String code, com.google.rpc.Status status) {
    JsonObject said = new JsonObject();
    said.addProperty("code", code);
    ErrorInfo info = ErrorInfo.getDefaultInstance();
    JsonArray fields = new JsonArray();
    if (status != null) {
      for (Any detail : status.getDetailsList()) {
        try {
          if (detail.is(ErrorInfo.class)) {
            info = detail.unpack(ErrorInfo.class);
          } else if (detail.is(BadRequest.class)) {
            for (BadRequest.FieldViolation violation :
                detail.unpack(BadRequest.class).getFieldViolationsList()) {
              fields.add(violation.getField());
            }
          }
        } catch (InvalidProtocolBufferException ignored) {
          // an unreadable detail is reported as a missing one
        }
      }
    }
    said.addProperty("reason", info.getReason());
    if (!DOMAIN.equals(info.getDomain())) {
      said.addProperty("domain", info.getDomain());
    }
    JsonObject metadata = new JsonObject();
    for (Map.Entry<String, String> entry : new TreeMap<>(info.getMetadataMap()).entrySet()) {
      metadata.addProperty(entry.getKey(), entry.getValue());
    }
    said.add("metadata", metadata);
    said.add("field_violations", fields);
    return said;
  }

  private static String compareErrors(JsonObject expected, JsonObject said) {
    List<String> problems = new ArrayList<>();
    for (String key : Arrays.asList("code", "reason", "metadata", "field_violations")) {
      JsonElement want = expected.has(key) ? expected.get(key) : empty(key);
      if (!want.equals(said.get(key))) {
        problems.add(key + " " + want + ", got " + said.get(key));
      }
    }
    if (said.has("domain")) {
      problems.add("ErrorInfo domain \"" + DOMAIN + "\", got " + said.get("domain"));
    }
    return problems.isEmpty() ? null : "expected " + String.join("; ", problems);
  }

  private static JsonElement empty(String key) {
    if (key.equals("metadata")) {
      return new JsonObject();
    }
    if (key.equals("field_violations")) {
      return new JsonArray();
    }
    return com.google.gson.JsonNull.INSTANCE;
  }

  /**
   * Clears the field at {@code path} (proto field names joined by dots), in every element of the
   * repeated messages on the way; a name that is no field of its message is an error.
   */
  static void clear(Message.Builder builder, String path, String whole) {
    String[] parts = path.split("\\.", 2);
    FieldDescriptor field = builder.getDescriptorForType().findFieldByName(parts[0]);
    if (field == null) {
      throw new IllegalArgumentException(
          builder.getDescriptorForType().getFullName() + " has no field '" + parts[0] + "' (ignore: '" + whole + "')");
    }
    if (parts.length == 1) {
      builder.clearField(field);
      return;
    }
    if (field.getJavaType() != FieldDescriptor.JavaType.MESSAGE || field.isMapField()) {
      throw new IllegalArgumentException(
          field.getFullName() + " holds no message fields (ignore: '" + whole + "')");
    }
    if (field.isRepeated() && builder.getRepeatedFieldCount(field) > 0) {
      for (int i = 0; i < builder.getRepeatedFieldCount(field); i++) {
        clear(builder.getRepeatedFieldBuilder(field, i), parts[1], whole);
      }
    } else if (!field.isRepeated() && builder.hasField(field)) {
      clear(builder.getFieldBuilder(field), parts[1], whole);
    } else {
      clear(builder.newBuilderForField(field), parts[1], whole); // still checks that the names exist
    }
  }

  private static String json(Message message) {
    try {
      return JsonFormat.printer().omittingInsignificantWhitespace().print(message);
    } catch (InvalidProtocolBufferException e) {
      return message.toString();
    }
  }
}
