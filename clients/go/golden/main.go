// Command golden replays the golden examples of the Flux contract (protos/examples/, see its
// README) against a fresh server of their fixture, with the generated Go types: each request is
// read from its protobuf JSON with protojson into the method's request type, sent, and the answer
// compared with the expected response read into the method's response type, after clearing the
// fields the case ignores; an error is compared by status code, ErrorInfo reason and metadata,
// and the fields of its BadRequest violations, never by its message. A method that answers with a
// stream (StreamSearch) is compared answer by answer, a failed message's answer (its error) as an
// error is, then by how the stream ended.
//
//	golden TARGET EXAMPLES
//
// It prints one tab-separated line per case ("ok FILE NAME" or "different FILE NAME WHAT"), then
// a count, and exits 1 when any case differs.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"time"

	_ "flux.vectors/api/flux_api/v1" // registers the contract's messages and services
	protov1 "github.com/golang/protobuf/proto"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

const (
	deadline = 30 * time.Second
	domain   = "flux.vectors"
)

type fixture struct {
	Files []string `json:"files"`
}

type exampleFile struct {
	Cases []example `json:"cases"`
}

type example struct {
	Name     string             `json:"name"`
	Method   string             `json:"method"`
	Request  json.RawMessage    `json:"request"`
	Requests *[]json.RawMessage `json:"requests"`
	Response json.RawMessage    `json:"response"`
	// Responses are the answers of a method that answers with a stream, in order.
	Responses *[]json.RawMessage `json:"responses"`
	Error     *failure           `json:"error"`
	Ignore    []string           `json:"ignore"`
}

// failure is an error as the examples write it.
type failure struct {
	Code            string            `json:"code"`
	Reason          string            `json:"reason"`
	Domain          string            `json:"domain,omitempty"`
	Metadata        map[string]string `json:"metadata"`
	FieldViolations []string          `json:"field_violations"`
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: golden TARGET EXAMPLES")
		os.Exit(2)
	}
	target, examples := os.Args[1], os.Args[2]
	var files fixture
	check(readJSON(filepath.Join(examples, "fixture.json"), &files))

	conn, err := grpc.Dial(target, grpc.WithInsecure())
	check(err)
	defer conn.Close()

	passed, failed := 0, 0
	for _, name := range files.Files {
		var content exampleFile
		check(readJSON(filepath.Join(examples, name), &content))
		for _, c := range content.Cases {
			if difference := replay(conn, c); difference == "" {
				passed++
				fmt.Printf("ok\t%s\t%s\n", name, c.Name)
			} else {
				failed++
				fmt.Printf("different\t%s\t%s\t%s\n", name, c.Name, strings.ReplaceAll(difference, "\n", " "))
			}
		}
	}
	fmt.Printf("%d passed, %d failed\n", passed, failed)
	if failed > 0 {
		os.Exit(1)
	}
}

// replay is "" when the server answers the case as the example says, else what differs.
func replay(conn *grpc.ClientConn, c example) string {
	method, err := lookup(c.Method)
	if err != nil {
		return err.Error()
	}
	var raw []json.RawMessage
	if method.IsStreamingClient() {
		if c.Requests == nil {
			return "a client-streaming case needs \"requests\""
		}
		raw = *c.Requests
	} else {
		raw = []json.RawMessage{c.Request}
	}
	var requests []proto.Message
	for _, r := range raw {
		request, err := parse(r, method.Input())
		if err != nil {
			return "the example does not read as the contract's messages: " + err.Error()
		}
		requests = append(requests, request)
	}
	if method.IsStreamingServer() {
		return replayStream(conn, method, requests, c)
	}
	var expected proto.Message
	if c.Response != nil {
		if expected, err = parse(c.Response, method.Output()); err != nil {
			return "the example does not read as the contract's messages: " + err.Error()
		}
	} else if c.Error == nil {
		return "the case has neither a response nor an error"
	}

	answer, err := call(conn, method, requests)
	if err != nil {
		said := errorOf(err)
		if expected != nil {
			return "expected a response, got the error " + show(said)
		}
		return compareErrors(*c.Error, said)
	}
	if expected == nil {
		return "expected the error " + show(*c.Error) + ", got a response: " + protojson.Format(answer)
	}
	return compareMessages(expected, answer, c.Ignore)
}

// compareMessages is "" when want and got are equal once the fields ignore names are cleared in both.
func compareMessages(want, got proto.Message, ignore []string) string {
	for _, path := range ignore {
		if err := clear(want.ProtoReflect(), path, path); err != nil {
			return err.Error()
		}
		if err := clear(got.ProtoReflect(), path, path); err != nil {
			return err.Error()
		}
	}
	if !proto.Equal(want, got) {
		return "expected " + compact(want) + ", got " + compact(got)
	}
	return ""
}

// failedMessage is one answer of a stream that carries a failed message's status, as the examples write it.
type failedMessage struct {
	RequestID string   `json:"requestId"`
	Error     *failure `json:"error"`
}

// replayStream compares a stream's answers with the example's, one by one, then how it ended.
func replayStream(conn *grpc.ClientConn, method protoreflect.MethodDescriptor, requests []proto.Message, c example) string {
	if c.Responses == nil {
		return "a case of a method that answers with a stream needs \"responses\""
	}
	answers, err := callStream(conn, method, requests)
	written := *c.Responses
	for i := 0; i < len(written) && i < len(answers); i++ {
		if difference := compareAnswer(written[i], method, answers[i], c.Ignore); difference != "" {
			return fmt.Sprintf("answer %d: %s", i, difference)
		}
	}
	if len(answers) != len(written) {
		return fmt.Sprintf("expected %d answers, got %d", len(written), len(answers))
	}
	if err != nil {
		said := errorOf(err)
		if c.Error == nil {
			return "expected the stream to end OK, it ended with the error " + show(said)
		}
		return compareErrors(*c.Error, said)
	}
	if c.Error != nil {
		return "expected the stream to end with the error " + show(*c.Error)
	}
	return ""
}

// compareAnswer compares one answer of a stream: a failed message's by its request id and error,
// any other by its fields, those the case ignores cleared.
func compareAnswer(raw json.RawMessage, method protoreflect.MethodDescriptor, got proto.Message, ignore []string) string {
	var written failedMessage
	if err := json.Unmarshal(raw, &written); err == nil && written.Error != nil {
		id, said, failed := messageErrorOf(got)
		if !failed {
			return "expected the error " + show(*written.Error) + ", got " + compact(got)
		}
		if written.RequestID != id {
			return fmt.Sprintf("expected request id %s, got %s", written.RequestID, id)
		}
		return compareErrors(*written.Error, said)
	}
	want, err := parse(raw, method.Output())
	if err != nil {
		return "the example does not read as the contract's messages: " + err.Error()
	}
	if _, said, failed := messageErrorOf(got); failed {
		return "expected " + compact(want) + ", got the error " + show(said)
	}
	return compareMessages(want, got, ignore)
}

// messageErrorOf reads an answer whose "result" is its "error" (StreamSearchResponse): its request
// id and that error (a google.rpc.Status field for field) as the examples write errors.
func messageErrorOf(answer proto.Message) (string, failure, bool) {
	m := answer.ProtoReflect()
	result := m.Descriptor().Oneofs().ByName("result")
	if result == nil {
		return "", failure{}, false
	}
	set := m.WhichOneof(result)
	if set == nil || set.Name() != "error" {
		return "", failure{}, false
	}
	data, err := proto.Marshal(m.Get(set).Message().Interface())
	if err != nil {
		return "", failure{}, false
	}
	st := &spb.Status{}
	if err := protov1.Unmarshal(data, st); err != nil { // genproto's Status is a message of the older API
		return "", failure{}, false
	}
	id := m.Get(m.Descriptor().Fields().ByName("request_id")).Uint()
	return fmt.Sprint(id), failureOf(status.FromProto(st)), true
}

// callStream sends every request, half-closes, and reads the answers until the stream ends.
func callStream(conn *grpc.ClientConn, method protoreflect.MethodDescriptor, requests []proto.Message) ([]proto.Message, error) {
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	stream, answerType, err := sendAll(ctx, conn, method, requests)
	if err != nil {
		return nil, err
	}
	var answers []proto.Message
	for {
		answer := answerType.New().Interface()
		if err := stream.RecvMsg(answer); err != nil {
			if errors.Is(err, io.EOF) {
				return answers, nil
			}
			return answers, err
		}
		answers = append(answers, answer)
	}
}

// lookup finds a method of the contract by its full name, e.g. flux_api.v1.VectorService/Search.
func lookup(name string) (protoreflect.MethodDescriptor, error) {
	service, method := name, ""
	if i := strings.LastIndex(name, "/"); i >= 0 {
		service, method = name[:i], name[i+1:]
	}
	found, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(service))
	if err != nil {
		return nil, fmt.Errorf("the contract has no service %q", service)
	}
	described, ok := found.(protoreflect.ServiceDescriptor)
	if !ok {
		return nil, fmt.Errorf("%q is no service", service)
	}
	m := described.Methods().ByName(protoreflect.Name(method))
	if m == nil {
		return nil, fmt.Errorf("%s has no method %q", service, method)
	}
	return m, nil
}

// parse reads protobuf JSON into a new message of the generated type of kind; unknown fields are refused.
func parse(raw json.RawMessage, kind protoreflect.MessageDescriptor) (proto.Message, error) {
	if raw == nil {
		return nil, errors.New("a message is missing")
	}
	messageType, err := protoregistry.GlobalTypes.FindMessageByName(kind.FullName())
	if err != nil {
		return nil, err
	}
	message := messageType.New().Interface()
	if err := protojson.Unmarshal(raw, message); err != nil {
		return nil, err
	}
	return message, nil
}

func call(conn *grpc.ClientConn, method protoreflect.MethodDescriptor, requests []proto.Message) (proto.Message, error) {
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	if !method.IsStreamingClient() {
		answerType, err := protoregistry.GlobalTypes.FindMessageByName(method.Output().FullName())
		if err != nil {
			return nil, err
		}
		answer := answerType.New().Interface()
		return answer, conn.Invoke(ctx, methodPath(method), requests[0], answer)
	}
	stream, answerType, err := sendAll(ctx, conn, method, requests)
	if err != nil {
		return nil, err
	}
	answer := answerType.New().Interface()
	return answer, stream.RecvMsg(answer)
}

// sendAll opens a stream of method, sends every request and half-closes it; the answers' type.
func sendAll(ctx context.Context, conn *grpc.ClientConn, method protoreflect.MethodDescriptor, requests []proto.Message) (grpc.ClientStream, protoreflect.MessageType, error) {
	answerType, err := protoregistry.GlobalTypes.FindMessageByName(method.Output().FullName())
	if err != nil {
		return nil, nil, err
	}
	desc := &grpc.StreamDesc{StreamName: string(method.Name()), ClientStreams: method.IsStreamingClient(), ServerStreams: method.IsStreamingServer()}
	stream, err := conn.NewStream(ctx, desc, methodPath(method))
	if err != nil {
		return nil, nil, err
	}
	for _, request := range requests {
		if err := stream.SendMsg(request); err != nil {
			if errors.Is(err, io.EOF) {
				break // the server ended the stream: RecvMsg has its status
			}
			return nil, nil, err
		}
	}
	if err := stream.CloseSend(); err != nil {
		return nil, nil, err
	}
	return stream, answerType, nil
}

func methodPath(method protoreflect.MethodDescriptor) string {
	return fmt.Sprintf("/%s/%s", method.Parent().FullName(), method.Name())
}

// errorOf is a failed call as the examples write it, with the domain only when it is not Flux's.
func errorOf(err error) failure {
	return failureOf(status.Convert(err))
}

// failureOf is a status as the examples write errors.
func failureOf(st *status.Status) failure {
	said := failure{Code: code.Code(st.Code()).String(), Metadata: map[string]string{}, FieldViolations: []string{}}
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			said.Reason = d.GetReason()
			if d.GetDomain() != domain {
				said.Domain = d.GetDomain()
			}
			for key, value := range d.GetMetadata() {
				said.Metadata[key] = value
			}
		case *errdetails.BadRequest:
			for _, violation := range d.GetFieldViolations() {
				said.FieldViolations = append(said.FieldViolations, violation.GetField())
			}
		}
	}
	if said.Reason == "" {
		said.Domain = "(no ErrorInfo)"
	}
	return said
}

func compareErrors(want, got failure) string {
	if want.Metadata == nil {
		want.Metadata = map[string]string{}
	}
	if want.FieldViolations == nil {
		want.FieldViolations = []string{}
	}
	var problems []string
	if want.Code != got.Code {
		problems = append(problems, fmt.Sprintf("code %q, got %q", want.Code, got.Code))
	}
	if want.Reason != got.Reason {
		problems = append(problems, fmt.Sprintf("reason %q, got %q", want.Reason, got.Reason))
	}
	if !reflect.DeepEqual(want.Metadata, got.Metadata) {
		problems = append(problems, fmt.Sprintf("metadata %s, got %s", sorted(want.Metadata), sorted(got.Metadata)))
	}
	if !reflect.DeepEqual(want.FieldViolations, got.FieldViolations) {
		problems = append(problems, fmt.Sprintf("field_violations %q, got %q", want.FieldViolations, got.FieldViolations))
	}
	if got.Domain != "" {
		problems = append(problems, fmt.Sprintf("ErrorInfo domain %q, got %q", domain, got.Domain))
	}
	if len(problems) == 0 {
		return ""
	}
	return "expected " + strings.Join(problems, "; ")
}

// clear clears the field at path (proto field names joined by dots) in m, in every element of the
// repeated messages on the way; a name that is no field of its message is an error.
func clear(m protoreflect.Message, path, whole string) error {
	head, rest := path, ""
	if i := strings.Index(path, "."); i >= 0 {
		head, rest = path[:i], path[i+1:]
	}
	field := m.Descriptor().Fields().ByName(protoreflect.Name(head))
	if field == nil {
		return fmt.Errorf("%s has no field %q (ignore: %q)", m.Descriptor().FullName(), head, whole)
	}
	if rest == "" {
		m.Clear(field)
		return nil
	}
	if field.Message() == nil || field.IsMap() {
		return fmt.Errorf("%s holds no message fields (ignore: %q)", field.FullName(), whole)
	}
	switch {
	case field.IsList():
		list := m.Mutable(field).List()
		for i := 0; i < list.Len(); i++ {
			if err := clear(list.Get(i).Message(), rest, whole); err != nil {
				return err
			}
		}
		if list.Len() == 0 {
			return clear(list.NewElement().Message(), rest, whole) // still checks that the names exist
		}
		return nil
	case m.Has(field):
		return clear(m.Mutable(field).Message(), rest, whole)
	default:
		return clear(m.NewField(field).Message(), rest, whole)
	}
}

func readJSON(path string, into interface{}) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, into); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func show(f failure) string {
	data, _ := json.Marshal(f)
	return string(data)
}

func sorted(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for key := range m {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, key := range keys {
		parts = append(parts, fmt.Sprintf("%q: %q", key, m[key]))
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

func compact(m proto.Message) string {
	return protojson.MarshalOptions{Multiline: false}.Format(m)
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
}
