package server

import (
	"context"
	"log/slog"

	"github.com/cairnbuild/cairn/auth"
	"google.golang.org/grpc/codes"
)

// authTable is what every gRPC method needs of its caller (see
// auth.MethodRule). A method missing from it is refused by the
// interceptor, and TestAuthTableCoversEveryMethod fails, so that a new
// method is closed until someone decides its rule here.
//
// Layers and chunks are content-addressed and shared by every namespace:
// reading one needs its digest and read access somewhere, and a write
// cannot change what a digest names; deleting one, or running the store's
// maintenance, needs the action over every namespace ("*"). Listing the
// layers would hand out every digest, and the store's totals walk the
// whole index: both need read over every namespace. Step records
// and registry images live in namespaces: their handlers check each one
// the request names.
var authTable = map[string]auth.MethodRule{
	"/cairn.v1.CacheService/LookupStep":  {Action: auth.Read, Namespaced: true},
	"/cairn.v1.CacheService/LookupChain": {Action: auth.Read, Namespaced: true},
	"/cairn.v1.CacheService/RecordStep":  {Action: auth.Write, Namespaced: true},
	"/cairn.v1.CacheService/ListSteps":   {Action: auth.Read, Namespaced: true},
	"/cairn.v1.CacheService/DeleteStep":  {Action: auth.Delete, Namespaced: true},

	"/cairn.v1.LayerService/PushLayer":         {Action: auth.Write},
	"/cairn.v1.LayerService/PullLayer":         {Action: auth.Read},
	"/cairn.v1.LayerService/StatLayer":         {Action: auth.Read},
	"/cairn.v1.LayerService/ListLayers":        {Action: auth.Read, Namespaced: true},
	"/cairn.v1.LayerService/DeleteLayer":       {Action: auth.Delete},
	"/cairn.v1.LayerService/FindMissingChunks": {Action: auth.Write},
	"/cairn.v1.LayerService/PutChunks":         {Action: auth.Write},
	"/cairn.v1.LayerService/CommitLayer":       {Action: auth.Write},
	"/cairn.v1.LayerService/GetLayerChunks":    {Action: auth.Read},
	"/cairn.v1.LayerService/GetChunks":         {Action: auth.Read},
	"/cairn.v1.LayerService/GetStats":          {Action: auth.Read, Namespaced: true},
	"/cairn.v1.LayerService/VerifyStore":       {Action: auth.Admin},
	"/cairn.v1.LayerService/CollectGarbage":    {Action: auth.Admin},

	"/cairn.v1.RegistryService/ListImages":  {Action: auth.Read, Namespaced: true},
	"/cairn.v1.RegistryService/DeleteImage": {Action: auth.Delete, Namespaced: true},

	"/grpc.health.v1.Health/Check": {Action: auth.Read, Public: true},
	"/grpc.health.v1.Health/Watch": {Action: auth.Read, Public: true},
	"/grpc.health.v1.Health/List":  {Action: auth.Read, Public: true},

	// Reflection lists the API's schema, which is public anyway.
	"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo":      {Action: auth.Read, Public: true},
	"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": {Action: auth.Read, Public: true},
}

// allNamespaces is what a method that shows every namespace's records
// needs read access to.
const allNamespaces = "*"

// checkNamespaces checks that the caller may do a in every namespace of
// nss (none: the default namespace, "", which only "*" covers).
func checkNamespaces(ctx context.Context, a auth.Action, nss []string) error {
	if len(nss) == 0 {
		return auth.Check(ctx, a, "")
	}
	for _, ns := range nss {
		if err := auth.Check(ctx, a, ns); err != nil {
			return err
		}
	}
	return nil
}

// audit writes the audit line of a namespaced write or delete, with its
// outcome.
func audit(ctx context.Context, log *slog.Logger, a auth.Action, what, ns string, err error) {
	id, ok := auth.FromContext(ctx)
	if !ok {
		return
	}
	code := codes.OK
	if err != nil {
		code, _ = classify(err)
	}
	auth.Audit(log, id, a, what, ns, slog.String("code", code.String()))
}
